// Keeps a library with no other sources well-formed for CMake.
namespace pmdrl {}
