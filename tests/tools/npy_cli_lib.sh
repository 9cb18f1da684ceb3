# Shared by the CLI tests of the commands that read .npy files (score_cli_test.sh,
# select_cli_test.sh). Source it after setting:
#   kvtier   the kvtier binary          subcommand   the command under test (score, select)
#   case     the test case's name       npy_seed     optional: a fixed seed of the generated
#                                                    data (default: one per file, per run)
# It makes a scratch directory $work (removed at exit) and defines the helpers below.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL ($case): $*"; echo "--- stdout"; cat "$work/out"; echo "--- stderr"; cat "$work/err"; exit 1; }
run() { "$kvtier" "$subcommand" "$@" >"$work/out" 2>"$work/err"; echo $?; }
expect_rc() { [[ $1 == "$2" ]] || fail "exit code $1, expected $2"; }
expect_out() { grep -qF -- "$1" "$work/out" || fail "stdout lacks: $1"; }
expect_err() { grep -qF -- "$1" "$work/err" || fail "stderr lacks: $1"; }

# npy NAME SHAPE [dtype] [fortran] [version] [extra]: float32 N(0,1)-ish data of SHAPE.
npy() {
  python3 - "$work/$1" "$2" "${3:-<f4}" "${4:-False}" "${5:-1}" "${6:-none}" "${npy_seed:-}" <<'PY'
import random, struct, sys
path, shape, dtype, fortran, version, extra, seed = sys.argv[1:8]
dims = [int(x) for x in shape.split(",") if x]
n = 1
for d in dims: n *= d
random.seed(int(seed) if seed else hash(path) % 1000)
vals = [random.gauss(0, 1) for _ in range(n)]
if extra == "nan" and n: vals[n // 2] = float("nan")
size = 8 if dtype == "<f8" else 4
data = struct.pack("<%d%s" % (n, "d" if size == 8 else "f"), *vals)
if extra == "truncate": data = data[:-4]
tup = "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"
header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (dtype, fortran, tup)
header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
magic = b"\x93NUMPY" if extra != "nomagic" else b"NOTNPY"
with open(path, "wb") as f:
  f.write(magic + bytes([int(version), 0]) + struct.pack("<H", len(header)) + header.encode() + data)
PY
}
