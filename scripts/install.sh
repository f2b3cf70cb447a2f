#!/usr/bin/env bash
# Installs transferlens for C and C++ consumers under a prefix:
#
#   scripts/install.sh --prefix DIR [--no-build | --lib-dir DIR]
#
#   DIR/lib/libtransferlens.so.VERSION           the shared library (SONAME libtransferlens.so.MAJOR)
#   DIR/lib/libtransferlens.so.MAJOR -> libtransferlens.so.VERSION
#   DIR/lib/libtransferlens.so -> libtransferlens.so.MAJOR
#   DIR/lib/libtransferlens.a                    the static library
#   DIR/lib/.debug/libtransferlens.so.VERSION.debug
#                                                the shared library's debug info (gdb finds it there)
#   DIR/include/transferlens.h, DIR/include/transferlens.hpp (the C++17 header-only layer)
#   DIR/lib/pkgconfig/transferlens.pc            pkg-config --cflags --libs transferlens
#   DIR/lib/cmake/transferlens/transferlensConfig.cmake (+ ConfigVersion)
#                                                find_package(transferlens) -> transferlens::transferlens
#                                                (shared) and transferlens::transferlens_static
#
# The installed libraries are stripped (strip --strip-unneeded for the .so, --strip-debug for
# the .a); the .so links to its separate debug file by a .gnu_debuglink section. It ends by
# printing the PKG_CONFIG_PATH, CMAKE_PREFIX_PATH and LD_LIBRARY_PATH settings for DIR.
#
# It builds the release library first (cargo build --release --lib) unless --no-build is given
# (install what target/release holds) or --lib-dir names the folder holding libtransferlens.so
# and .a (e.g. a debug build). CARGO, CARGO_TARGET_DIR, STRIP and OBJCOPY are honoured. The
# installed files are relocatable: the pkg-config and CMake files find the prefix from their own
# location.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix=""
build=1
lib_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a folder}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --no-build) build=0; shift ;;
        --lib-dir) lib_dir="${2:?--lib-dir needs a folder}"; build=0; shift 2 ;;
        --lib-dir=*) lib_dir="${1#--lib-dir=}"; build=0; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$prefix" ]; then
    echo "install.sh: --prefix DIR is required (see --help)" >&2
    exit 2
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
if [ "$build" = 1 ]; then
    "${CARGO:-cargo}" build --release --lib --manifest-path "$root/Cargo.toml" --target-dir "$target_dir"
fi
lib_dir="${lib_dir:-$target_dir/release}"
for f in libtransferlens.so libtransferlens.a; do
    if [ ! -f "$lib_dir/$f" ]; then
        echo "install.sh: $lib_dir/$f is missing (build it with cargo build --release --lib)" >&2
        exit 1
    fi
done

strip_tool="${STRIP:-strip}"
objcopy_tool="${OBJCOPY:-objcopy}"
for tool in "$strip_tool" "$objcopy_tool"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install.sh: $tool is missing (it comes with binutils)" >&2
        exit 1
    fi
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
major="${version%%.*}"
so_real="libtransferlens.so.$version"
so_major="libtransferlens.so.$major"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
install -d "$prefix/lib/pkgconfig" "$prefix/lib/cmake/transferlens" "$prefix/lib/.debug" "$prefix/include"

# The shared library: its debug info goes to lib/.debug, where gdb looks for the file that the
# .gnu_debuglink section names; the library itself keeps only what linking and loading need.
install -m 0755 "$lib_dir/libtransferlens.so" "$prefix/lib/$so_real"
debug_file="$prefix/lib/.debug/$so_real.debug"
"$objcopy_tool" --only-keep-debug "$prefix/lib/$so_real" "$debug_file"
chmod 0644 "$debug_file"
"$strip_tool" --strip-unneeded "$prefix/lib/$so_real"
(cd "$prefix/lib" && "$objcopy_tool" --add-gnu-debuglink=".debug/$so_real.debug" "$so_real")
ln -sfn "$so_real" "$prefix/lib/$so_major"
ln -sfn "$so_major" "$prefix/lib/libtransferlens.so"

install -m 0644 "$lib_dir/libtransferlens.a" "$prefix/lib/"
"$strip_tool" --strip-debug "$prefix/lib/libtransferlens.a"
install -m 0644 "$root/include/transferlens.h" "$root/bindings/cpp/transferlens.hpp" "$prefix/include/"

# Libraries the Rust standard library needs when the static archive is linked.
static_libs="-lpthread -ldl -lm -lrt -lgcc_s"

cat > "$prefix/lib/pkgconfig/transferlens.pc" <<EOF
prefix=\${pcfiledir}/../..
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: transferlens
Description: What is being transferred in transfer learning: linear CKA and weight-space analyses (C ABI)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -ltransferlens
Libs.private: $static_libs
EOF

cat > "$prefix/lib/cmake/transferlens/transferlensConfig.cmake" <<EOF
# CMake package of transferlens $version: find_package(transferlens) gives the imported targets
#   transferlens::transferlens         the shared library (libtransferlens.so.$version)
#   transferlens::transferlens_static  the static library (libtransferlens.a)
# with include/transferlens.h and include/transferlens.hpp (C++17) on their include path.
get_filename_component(_tl_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

if(NOT TARGET transferlens::transferlens)
  add_library(transferlens::transferlens SHARED IMPORTED)
  set_target_properties(transferlens::transferlens PROPERTIES
    IMPORTED_LOCATION "\${_tl_prefix}/lib/$so_real"
    IMPORTED_SONAME "$so_major"
    INTERFACE_INCLUDE_DIRECTORIES "\${_tl_prefix}/include")
endif()

if(NOT TARGET transferlens::transferlens_static)
  find_package(Threads REQUIRED)
  add_library(transferlens::transferlens_static STATIC IMPORTED)
  set_target_properties(transferlens::transferlens_static PROPERTIES
    IMPORTED_LOCATION "\${_tl_prefix}/lib/libtransferlens.a"
    INTERFACE_INCLUDE_DIRECTORIES "\${_tl_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;\${CMAKE_DL_LIBS};m;rt")
endif()

set(transferlens_VERSION "$version")
set(transferlens_INCLUDE_DIRS "\${_tl_prefix}/include")
set(transferlens_LIBRARIES transferlens::transferlens)
unset(_tl_prefix)
EOF

cat > "$prefix/lib/cmake/transferlens/transferlensConfigVersion.cmake" <<EOF
# Compatible when the installed version is at least the one asked for, with the same major
# version; before 1.0 the minor version must match as well (0.x releases may break the API).
set(PACKAGE_VERSION "$version")
set(PACKAGE_VERSION_COMPATIBLE FALSE)
set(PACKAGE_VERSION_EXACT FALSE)
if(NOT PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  if("$major" STREQUAL "0")
    string(REGEX MATCH "^0\\\\.[0-9]+" _tl_have "\${PACKAGE_VERSION}")
    string(REGEX MATCH "^0\\\\.[0-9]+" _tl_want "\${PACKAGE_FIND_VERSION}.0")
    if(_tl_have STREQUAL _tl_want OR PACKAGE_FIND_VERSION_COUNT EQUAL 0)
      set(PACKAGE_VERSION_COMPATIBLE TRUE)
    endif()
  elseif(PACKAGE_FIND_VERSION_MAJOR STREQUAL "$major")
    set(PACKAGE_VERSION_COMPATIBLE TRUE)
  endif()
endif()
if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
  set(PACKAGE_VERSION_EXACT TRUE)
endif()
# A 64-bit library: refuse it to 32-bit projects.
if(CMAKE_SIZEOF_VOID_P AND NOT CMAKE_SIZEOF_VOID_P EQUAL 8)
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
endif()
EOF

# The prefix inside the double-quoted settings below, with \ " $ ` escaped.
prefix_quoted="$(printf '%s' "$prefix" | sed 's/[\\"$`]/\\&/g')"
cat <<EOF
installed transferlens $version under $prefix
  shared library  $prefix/lib/$so_real (SONAME $so_major; debug info in lib/.debug)
  static library  $prefix/lib/libtransferlens.a
  headers         $prefix/include/transferlens.h, transferlens.hpp

To build against it, set (e.g. in ~/.profile):
  export PKG_CONFIG_PATH="$prefix_quoted/lib/pkgconfig\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
  export CMAKE_PREFIX_PATH="$prefix_quoted\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
and, for programs linked to the shared library to find it at run time (unless they were linked
with -Wl,-rpath,$prefix/lib, or the prefix is a system one and ldconfig has run):
  export LD_LIBRARY_PATH="$prefix_quoted/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
Then: cc prog.c \$(pkg-config --cflags --libs transferlens), or find_package(transferlens) in CMake.
EOF
