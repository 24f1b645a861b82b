"""TensorRT target: engines built from an exported artifact, with or without the UniAttn
plugins, for NVIDIA TensorRT 10/11 or TensorRT-RTX 1.x (one code path, compat.py).

  build.build_engine(onnx_path, out_dir, BuildOptions)   preflight + engine + manifest
  preflight.preflight(model, flavour)                     do the custom nodes resolve?
  session.TensorRTSession(engine_dir)                     generation (needs a supported GPU)
  graphs.StaticBatch / DecodeGraphs                       static-cache buffers, CUDA graphs
  cli.add_arguments / cli.build_from_args                 the `model --target trt` flags

What ran where: engine builds (dynamic and static caches, with and without plugins) and the
plugins' build-time logic are verified on CPU with TensorRT-RTX. Engine execution is not verifiable in this
environment: no TensorRT for the H100 (sm_90) is obtainable and TensorRT-RTX refuses
compute capability 9.0. The kernels the plugins launch are the ones verified on the H100
through ONNX Runtime.
"""
