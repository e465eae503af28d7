# qtool_add_plugin(<name> SOURCES <c files> [CUDA_SOURCES <cu files>] [LIBS <libs>] [CUDA_LIBS <libs>])
# Builds lib<name>... as qtool_<name>.so into the plugin directory, linked
# only against the SDK (and CUDA libraries when CUDA is on).
function(qtool_add_plugin name)
  cmake_parse_arguments(P "" "" "SOURCES;CUDA_SOURCES;LIBS;CUDA_LIBS" ${ARGN})
  set(srcs ${P_SOURCES})
  if(QTOOL_HAVE_CUDA)
    list(APPEND srcs ${P_CUDA_SOURCES})
  endif()
  add_library(qtool_plugin_${name} MODULE ${srcs})
  set_target_properties(qtool_plugin_${name} PROPERTIES
    OUTPUT_NAME "qtool_${name}" PREFIX "lib"
    LIBRARY_OUTPUT_DIRECTORY "${QTOOL_PLUGIN_BUILD_DIR}"
    C_VISIBILITY_PRESET hidden CUDA_VISIBILITY_PRESET hidden)
  target_link_libraries(qtool_plugin_${name} PRIVATE qtool::sdk ${P_LIBS})
  target_link_options(qtool_plugin_${name} PRIVATE "LINKER:--no-undefined")
  if(QTOOL_HAVE_CUDA)
    target_compile_definitions(qtool_plugin_${name} PRIVATE QTOOL_HAVE_CUDA=1)
    target_link_libraries(qtool_plugin_${name} PRIVATE ${P_CUDA_LIBS})
    if(P_CUDA_SOURCES)
      set_target_properties(qtool_plugin_${name} PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
      target_link_libraries(qtool_plugin_${name} PRIVATE CUDA::cudart)
    endif()
  endif()
  install(TARGETS qtool_plugin_${name} LIBRARY DESTINATION "${QTOOL_PLUGIN_SUBDIR}")
  set_property(GLOBAL APPEND PROPERTY QTOOL_PLUGIN_TARGETS qtool_plugin_${name})
endfunction()
