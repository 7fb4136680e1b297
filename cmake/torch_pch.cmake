# A precompiled <ATen/ATen.h> for the sources that parse most of Torch.
#
# Parsing <ATen/ATen.h> costs about 6 s per translation unit (GCC 12, -O2 -g);
# <torch/torch.h> includes it and more. pmdrl_torch_pch() precompiles <ATen/ATen.h> once,
# in pmdrl_nn, and every other target reuses it (REUSE_FROM: all targets share one set of
# compile options, so one .gch fits all). Only the sources that include <torch/torch.h> or
# <ATen/ATen.h>, themselves or through the project's own "dir/x.h" headers, use it; the
# others are marked SKIP_PRECOMPILE_HEADERS, since loading the 360 MB precompiled header
# costs them more than they would parse. Measured one source at a time on this 2-core
# machine, plain -> with it:
#   a <torch/torch.h> source (learner/training/sharded_adamw.cc)  20 s -> 15 s
#   an <ATen/ATen.h> source (learner/training/pmd_mean_loss.cc)    8.4 s -> 2.7 s
#   an <ATen/core/Tensor.h> source (training_loop.cc)   8.6 s -> 8.8 s (skipped)
# A precompiled <torch/torch.h> instead (780 MB) takes the first to 10 s but the second to
# 9.8 s; one target can reuse only one precompiled header, so <ATen/ATen.h> is the
# better one for all. The scan runs at configure time; a source that starts including
# Torch later only compiles slower until the next configure.
# -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON builds without it.

# Whether FILE includes <torch/torch.h> or <ATen/ATen.h>, itself or through the project's
# headers; memoised per file in global properties.
function(_pmdrl_parses_torch file out)
  get_property(known GLOBAL PROPERTY "_PMDRL_TORCH_${file}" SET)
  if(known)
    get_property(value GLOBAL PROPERTY "_PMDRL_TORCH_${file}")
    set(${out} ${value} PARENT_SCOPE)
    return()
  endif()
  set_property(GLOBAL PROPERTY "_PMDRL_TORCH_${file}" OFF)  # include cycles end here
  set(value OFF)
  file(STRINGS "${file}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
  foreach(line IN LISTS includes)
    if(line MATCHES "<(torch/torch|ATen/ATen)\\.h>")
      set(value ON)
      break()
    elseif(line MATCHES "\"([^\"]+)\"")
      set(header "${PROJECT_SOURCE_DIR}/${CMAKE_MATCH_1}")
      if(EXISTS "${header}")
        _pmdrl_parses_torch("${header}" sub)
        if(sub)
          set(value ON)
          break()
        endif()
      endif()
    endif()
  endforeach()
  set_property(GLOBAL PROPERTY "_PMDRL_TORCH_${file}" ${value})
  set(${out} ${value} PARENT_SCOPE)
endfunction()

# Gives every target defined in DIRS (and their subdirectories) the precompiled header
# for its Torch-heavy sources; the first such target owns it.
function(pmdrl_torch_pch owner)
  if(CMAKE_DISABLE_PRECOMPILE_HEADERS)
    return()
  endif()
  target_precompile_headers(${owner} PRIVATE <ATen/ATen.h>)
  set(dirs ${ARGN})
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${subdirs})
    get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target IN LISTS targets)
      get_target_property(type ${target} TYPE)
      if(NOT type MATCHES "^(EXECUTABLE|STATIC_LIBRARY|SHARED_LIBRARY|OBJECT_LIBRARY)$")
        continue()
      endif()
      get_target_property(sources ${target} SOURCES)
      set(heavy)
      set(light)
      foreach(src IN LISTS sources)
        if(NOT src MATCHES "\\.(cc|cpp|cxx)$")
          continue()
        endif()
        cmake_path(ABSOLUTE_PATH src BASE_DIRECTORY "${dir}" OUTPUT_VARIABLE path)
        set(parses OFF)
        if(EXISTS "${path}")
          _pmdrl_parses_torch("${path}" parses)
        endif()
        if(parses)
          list(APPEND heavy "${src}")
        else()
          list(APPEND light "${src}")
        endif()
      endforeach()
      if(light)
        set_source_files_properties(${light} DIRECTORY "${dir}"
                                    PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
      endif()
      if(heavy AND NOT target STREQUAL owner)
        target_precompile_headers(${target} REUSE_FROM ${owner})
      endif()
    endforeach()
  endwhile()
endfunction()
