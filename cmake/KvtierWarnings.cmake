# kvtier_warnings: an interface target every kvtier target links for its warning flags.
add_library(kvtier_warnings INTERFACE)
target_compile_options(kvtier_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor
    -Wold-style-cast -Wcast-align -Woverloaded-virtual -Wimplicit-fallthrough>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${KVTIER_WERROR}>>:-Werror>)
