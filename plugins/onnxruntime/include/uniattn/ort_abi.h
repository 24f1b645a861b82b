/* The subset of the ONNX Runtime C ABI (onnxruntime_c_api.h) that uniattn uses, declared
 * here because ORT's wheels ship no C headers.
 *
 * The ABI is stable by design: OrtApiBase is two function pointers; OrtApi is a table of
 * function pointers that only ever grows at the end (API version N = ORT 1.N); OrtCustomOp
 * fields are read only up to the `version` the op declares. So this file places every
 * OrtApi entry up to the highest one used at its exact index: typed where uniattn calls it,
 * an untyped placeholder (named after the real entry) otherwise, and a static assert pins
 * the offset of every typed entry. To use another entry, replace its placeholder by its
 * typed declaration in place and add its UA_ORT_AT line; to use one beyond the table,
 * append the entries in between.
 *
 * Written from the documented layout of ORT's public header (API 18 copy); the entry order
 * is checked against the running library by tests/plugins/test_ort_abi.py.
 */
#ifndef UNIATTN_ORT_ABI_H
#define UNIATTN_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define UA_ORT_NOEXCEPT noexcept
#define UA_ORT_STATIC_ASSERT static_assert
#else
#define UA_ORT_NOEXCEPT
#define UA_ORT_STATIC_ASSERT _Static_assert
#endif

#ifdef _WIN32
#define ORT_API_CALL __stdcall
#else
#define ORT_API_CALL
#endif

/* The lowest API version providing everything below: KernelContext_GetAllocator arrived
 * with API 15, OrtCustomOp::CreateKernelV2 / KernelComputeV2 with API 16,
 * KernelContext_ParallelFor and OrtCustomOp::GetStartVersion / GetEndVersion with API 17,
 * OrtCustomOp::GetMayInplace with API 18. */
#define UA_ORT_API_VERSION 18

typedef enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 = 3,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16 = 4,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16 = 5,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING = 8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL = 9,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32 = 12,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64 = 13,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX64 = 14,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX128 = 15,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16 = 16
} ONNXTensorElementDataType;

typedef enum OrtErrorCode {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NO_SUCHFILE = 3,
  ORT_NO_MODEL = 4,
  ORT_ENGINE_ERROR = 5,
  ORT_RUNTIME_EXCEPTION = 6,
  ORT_INVALID_PROTOBUF = 7,
  ORT_MODEL_LOADED = 8,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_INVALID_GRAPH = 10,
  ORT_EP_FAIL = 11
} OrtErrorCode;

typedef enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeDefault = 0
} OrtMemType;

typedef enum OrtLoggingLevel {
  ORT_LOGGING_LEVEL_VERBOSE = 0,
  ORT_LOGGING_LEVEL_INFO = 1,
  ORT_LOGGING_LEVEL_WARNING = 2,
  ORT_LOGGING_LEVEL_ERROR = 3,
  ORT_LOGGING_LEVEL_FATAL = 4
} OrtLoggingLevel;

typedef enum OrtAllocatorType {
  OrtInvalidAllocator = -1,
  OrtDeviceAllocator = 0,
  OrtArenaAllocator = 1
} OrtAllocatorType;

typedef enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2
} OrtCustomOpInputOutputCharacteristic;

/* Opaque runtime objects (only ever handled through pointers). */
typedef struct OrtStatus OrtStatus;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtAllocator OrtAllocator;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtCustomOp OrtCustomOp;
typedef struct OrtApi OrtApi;
/* Used by the runtime library (runtime/), which drives sessions through this ABI too. */
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtIoBinding OrtIoBinding;
typedef struct OrtCUDAProviderOptionsV2 OrtCUDAProviderOptionsV2;

typedef struct OrtApiBase {
  const OrtApi*(ORT_API_CALL* GetApi)(uint32_t version) UA_ORT_NOEXCEPT; /* NULL above the runtime's version */
  const char*(ORT_API_CALL* GetVersionString)(void) UA_ORT_NOEXCEPT;
} OrtApiBase;

/* An entry uniattn does not call: right size, no signature. */
#define UA_ORT_UNTYPED(name) void(ORT_API_CALL * name)(void)

// A log sink: ORT calls it for each message at or above the environment's severity.
typedef void(ORT_API_CALL* OrtLoggingFunction)(void* param, OrtLoggingLevel severity, const char* category,
                                               const char* logid, const char* code_location, const char* message);

struct OrtApi {
  /*   0 */ OrtStatus*(ORT_API_CALL* CreateStatus)(OrtErrorCode code, const char* msg) UA_ORT_NOEXCEPT;
  /*   1 */ UA_ORT_UNTYPED(GetErrorCode);
  /*   2 */ const char*(ORT_API_CALL* GetErrorMessage)(const OrtStatus* status) UA_ORT_NOEXCEPT;
  /*   3 */ OrtStatus*(ORT_API_CALL* CreateEnv)(OrtLoggingLevel log_severity_level, const char* logid, OrtEnv** out) UA_ORT_NOEXCEPT;
  /*   4 */ OrtStatus*(ORT_API_CALL* CreateEnvWithCustomLogger)(OrtLoggingFunction logging_function, void* logger_param, OrtLoggingLevel log_severity_level, const char* logid, OrtEnv** out) UA_ORT_NOEXCEPT;
  /*   5 */ UA_ORT_UNTYPED(EnableTelemetryEvents);
  /*   6 */ UA_ORT_UNTYPED(DisableTelemetryEvents);
  /*   7 */ OrtStatus*(ORT_API_CALL* CreateSession)(const OrtEnv* env, const char* model_path, const OrtSessionOptions* options, OrtSession** out) UA_ORT_NOEXCEPT;
  /*   8 */ UA_ORT_UNTYPED(CreateSessionFromArray);
  /*   9 */ UA_ORT_UNTYPED(Run);
  /*  10 */ OrtStatus*(ORT_API_CALL* CreateSessionOptions)(OrtSessionOptions** options) UA_ORT_NOEXCEPT;
  /*  11 */ UA_ORT_UNTYPED(SetOptimizedModelFilePath);
  /*  12 */ UA_ORT_UNTYPED(CloneSessionOptions);
  /*  13 */ UA_ORT_UNTYPED(SetSessionExecutionMode);
  /*  14 */ OrtStatus*(ORT_API_CALL* EnableProfiling)(OrtSessionOptions* options, const char* profile_file_prefix) UA_ORT_NOEXCEPT;
  /*  15 */ UA_ORT_UNTYPED(DisableProfiling);
  /*  16 */ UA_ORT_UNTYPED(EnableMemPattern);
  /*  17 */ UA_ORT_UNTYPED(DisableMemPattern);
  /*  18 */ UA_ORT_UNTYPED(EnableCpuMemArena);
  /*  19 */ UA_ORT_UNTYPED(DisableCpuMemArena);
  /*  20 */ UA_ORT_UNTYPED(SetSessionLogId);
  /*  21 */ UA_ORT_UNTYPED(SetSessionLogVerbosityLevel);
  /*  22 */ OrtStatus*(ORT_API_CALL* SetSessionLogSeverityLevel)(OrtSessionOptions* options, int session_log_severity_level) UA_ORT_NOEXCEPT;
  /*  23 */ UA_ORT_UNTYPED(SetSessionGraphOptimizationLevel);
  /*  24 */ OrtStatus*(ORT_API_CALL* SetIntraOpNumThreads)(OrtSessionOptions* options, int intra_op_num_threads) UA_ORT_NOEXCEPT;
  /*  25 */ UA_ORT_UNTYPED(SetInterOpNumThreads);
  /*  26 */ OrtStatus*(ORT_API_CALL* CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out) UA_ORT_NOEXCEPT;
  /*  27 */ OrtStatus*(ORT_API_CALL* CustomOpDomain_Add)(OrtCustomOpDomain* domain, const OrtCustomOp* op) UA_ORT_NOEXCEPT;
  /*  28 */ OrtStatus*(ORT_API_CALL* AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain) UA_ORT_NOEXCEPT;
  /*  29 */ UA_ORT_UNTYPED(RegisterCustomOpsLibrary);
  /*  30 */ OrtStatus*(ORT_API_CALL* SessionGetInputCount)(const OrtSession* session, size_t* out) UA_ORT_NOEXCEPT;
  /*  31 */ OrtStatus*(ORT_API_CALL* SessionGetOutputCount)(const OrtSession* session, size_t* out) UA_ORT_NOEXCEPT;
  /*  32 */ UA_ORT_UNTYPED(SessionGetOverridableInitializerCount);
  /*  33 */ UA_ORT_UNTYPED(SessionGetInputTypeInfo);
  /*  34 */ UA_ORT_UNTYPED(SessionGetOutputTypeInfo);
  /*  35 */ UA_ORT_UNTYPED(SessionGetOverridableInitializerTypeInfo);
  /*  36 */ OrtStatus*(ORT_API_CALL* SessionGetInputName)(const OrtSession* session, size_t index, OrtAllocator* allocator, char** value) UA_ORT_NOEXCEPT;
  /*  37 */ OrtStatus*(ORT_API_CALL* SessionGetOutputName)(const OrtSession* session, size_t index, OrtAllocator* allocator, char** value) UA_ORT_NOEXCEPT;
  /*  38 */ UA_ORT_UNTYPED(SessionGetOverridableInitializerName);
  /*  39 */ OrtStatus*(ORT_API_CALL* CreateRunOptions)(OrtRunOptions** out) UA_ORT_NOEXCEPT;
  /*  40 */ UA_ORT_UNTYPED(RunOptionsSetRunLogVerbosityLevel);
  /*  41 */ UA_ORT_UNTYPED(RunOptionsSetRunLogSeverityLevel);
  /*  42 */ UA_ORT_UNTYPED(RunOptionsSetRunTag);
  /*  43 */ UA_ORT_UNTYPED(RunOptionsGetRunLogVerbosityLevel);
  /*  44 */ UA_ORT_UNTYPED(RunOptionsGetRunLogSeverityLevel);
  /*  45 */ UA_ORT_UNTYPED(RunOptionsGetRunTag);
  /*  46 */ UA_ORT_UNTYPED(RunOptionsSetTerminate);
  /*  47 */ UA_ORT_UNTYPED(RunOptionsUnsetTerminate);
  /*  48 */ OrtStatus*(ORT_API_CALL* CreateTensorAsOrtValue)(OrtAllocator* allocator, const int64_t* shape, size_t shape_len, ONNXTensorElementDataType type, OrtValue** out) UA_ORT_NOEXCEPT;
  /*  49 */ OrtStatus*(ORT_API_CALL* CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo* info, void* p_data, size_t p_data_len, const int64_t* shape, size_t shape_len, ONNXTensorElementDataType type, OrtValue** out) UA_ORT_NOEXCEPT;
  /*  50 */ UA_ORT_UNTYPED(IsTensor);
  /*  51 */ OrtStatus*(ORT_API_CALL* GetTensorMutableData)(OrtValue* value, void** out) UA_ORT_NOEXCEPT;
  /*  52 */ UA_ORT_UNTYPED(FillStringTensor);
  /*  53 */ UA_ORT_UNTYPED(GetStringTensorDataLength);
  /*  54 */ UA_ORT_UNTYPED(GetStringTensorContent);
  /*  55 */ UA_ORT_UNTYPED(CastTypeInfoToTensorInfo);
  /*  56 */ UA_ORT_UNTYPED(GetOnnxTypeFromTypeInfo);
  /*  57 */ UA_ORT_UNTYPED(CreateTensorTypeAndShapeInfo);
  /*  58 */ UA_ORT_UNTYPED(SetTensorElementType);
  /*  59 */ UA_ORT_UNTYPED(SetDimensions);
  /*  60 */ OrtStatus*(ORT_API_CALL* GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, ONNXTensorElementDataType* out) UA_ORT_NOEXCEPT;
  /*  61 */ OrtStatus*(ORT_API_CALL* GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out) UA_ORT_NOEXCEPT;
  /*  62 */ OrtStatus*(ORT_API_CALL* GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dim_values, size_t dim_values_length) UA_ORT_NOEXCEPT;
  /*  63 */ UA_ORT_UNTYPED(GetSymbolicDimensions);
  /*  64 */ UA_ORT_UNTYPED(GetTensorShapeElementCount);
  /*  65 */ OrtStatus*(ORT_API_CALL* GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) UA_ORT_NOEXCEPT;
  /*  66 */ UA_ORT_UNTYPED(GetTypeInfo);
  /*  67 */ UA_ORT_UNTYPED(GetValueType);
  /*  68 */ OrtStatus*(ORT_API_CALL* CreateMemoryInfo)(const char* name, OrtAllocatorType type, int id, OrtMemType mem_type, OrtMemoryInfo** out) UA_ORT_NOEXCEPT;
  /*  69 */ OrtStatus*(ORT_API_CALL* CreateCpuMemoryInfo)(OrtAllocatorType type, OrtMemType mem_type, OrtMemoryInfo** out) UA_ORT_NOEXCEPT;
  /*  70 */ UA_ORT_UNTYPED(CompareMemoryInfo);
  /*  71 */ UA_ORT_UNTYPED(MemoryInfoGetName);
  /*  72 */ UA_ORT_UNTYPED(MemoryInfoGetId);
  /*  73 */ UA_ORT_UNTYPED(MemoryInfoGetMemType);
  /*  74 */ UA_ORT_UNTYPED(MemoryInfoGetType);
  /*  75 */ OrtStatus*(ORT_API_CALL* AllocatorAlloc)(OrtAllocator* allocator, size_t size, void** out) UA_ORT_NOEXCEPT;
  /*  76 */ OrtStatus*(ORT_API_CALL* AllocatorFree)(OrtAllocator* allocator, void* p) UA_ORT_NOEXCEPT;
  /*  77 */ UA_ORT_UNTYPED(AllocatorGetInfo);
  /*  78 */ OrtStatus*(ORT_API_CALL* GetAllocatorWithDefaultOptions)(OrtAllocator** out) UA_ORT_NOEXCEPT;
  /*  79 */ UA_ORT_UNTYPED(AddFreeDimensionOverride);
  /*  80 */ UA_ORT_UNTYPED(GetValue);
  /*  81 */ UA_ORT_UNTYPED(GetValueCount);
  /*  82 */ UA_ORT_UNTYPED(CreateValue);
  /*  83 */ UA_ORT_UNTYPED(CreateOpaqueValue);
  /*  84 */ UA_ORT_UNTYPED(GetOpaqueValue);
  /*  85 */ OrtStatus*(ORT_API_CALL* KernelInfoGetAttribute_float)(const OrtKernelInfo* info, const char* name, float* out) UA_ORT_NOEXCEPT;
  /*  86 */ OrtStatus*(ORT_API_CALL* KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name, int64_t* out) UA_ORT_NOEXCEPT;
  /*  87 */ OrtStatus*(ORT_API_CALL* KernelInfoGetAttribute_string)(const OrtKernelInfo* info, const char* name, char* out, size_t* size) UA_ORT_NOEXCEPT;
  /*  88 */ UA_ORT_UNTYPED(KernelContext_GetInputCount);
  /*  89 */ OrtStatus*(ORT_API_CALL* KernelContext_GetOutputCount)(const OrtKernelContext* context, size_t* out) UA_ORT_NOEXCEPT;
  /*  90 */ OrtStatus*(ORT_API_CALL* KernelContext_GetInput)(const OrtKernelContext* context, size_t index, const OrtValue** out) UA_ORT_NOEXCEPT;
  /*  91 */ OrtStatus*(ORT_API_CALL* KernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dim_values, size_t dim_count, OrtValue** out) UA_ORT_NOEXCEPT;
  /*  92 */ void(ORT_API_CALL* ReleaseEnv)(OrtEnv* input) UA_ORT_NOEXCEPT;
  /*  93 */ void(ORT_API_CALL* ReleaseStatus)(OrtStatus* input) UA_ORT_NOEXCEPT;
  /*  94 */ void(ORT_API_CALL* ReleaseMemoryInfo)(OrtMemoryInfo* input) UA_ORT_NOEXCEPT;
  /*  95 */ void(ORT_API_CALL* ReleaseSession)(OrtSession* input) UA_ORT_NOEXCEPT;
  /*  96 */ void(ORT_API_CALL* ReleaseValue)(OrtValue* input) UA_ORT_NOEXCEPT;
  /*  97 */ void(ORT_API_CALL* ReleaseRunOptions)(OrtRunOptions* input) UA_ORT_NOEXCEPT;
  /*  98 */ UA_ORT_UNTYPED(ReleaseTypeInfo);
  /*  99 */ void(ORT_API_CALL* ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* input) UA_ORT_NOEXCEPT;
  /* 100 */ void(ORT_API_CALL* ReleaseSessionOptions)(OrtSessionOptions* input) UA_ORT_NOEXCEPT;
  /* 101 */ void(ORT_API_CALL* ReleaseCustomOpDomain)(OrtCustomOpDomain* input) UA_ORT_NOEXCEPT;
  /* 102 */ UA_ORT_UNTYPED(GetDenotationFromTypeInfo);
  /* 103 */ UA_ORT_UNTYPED(CastTypeInfoToMapTypeInfo);
  /* 104 */ UA_ORT_UNTYPED(CastTypeInfoToSequenceTypeInfo);
  /* 105 */ UA_ORT_UNTYPED(GetMapKeyType);
  /* 106 */ UA_ORT_UNTYPED(GetMapValueType);
  /* 107 */ UA_ORT_UNTYPED(GetSequenceElementType);
  /* 108 */ UA_ORT_UNTYPED(ReleaseMapTypeInfo);
  /* 109 */ UA_ORT_UNTYPED(ReleaseSequenceTypeInfo);
  /* 110 */ OrtStatus*(ORT_API_CALL* SessionEndProfiling)(OrtSession* session, OrtAllocator* allocator, char** out) UA_ORT_NOEXCEPT;
  /* 111 */ UA_ORT_UNTYPED(SessionGetModelMetadata);
  /* 112 */ UA_ORT_UNTYPED(ModelMetadataGetProducerName);
  /* 113 */ UA_ORT_UNTYPED(ModelMetadataGetGraphName);
  /* 114 */ UA_ORT_UNTYPED(ModelMetadataGetDomain);
  /* 115 */ UA_ORT_UNTYPED(ModelMetadataGetDescription);
  /* 116 */ UA_ORT_UNTYPED(ModelMetadataLookupCustomMetadataMap);
  /* 117 */ UA_ORT_UNTYPED(ModelMetadataGetVersion);
  /* 118 */ UA_ORT_UNTYPED(ReleaseModelMetadata);
  /* 119 */ UA_ORT_UNTYPED(CreateEnvWithGlobalThreadPools);
  /* 120 */ UA_ORT_UNTYPED(DisablePerSessionThreads);
  /* 121 */ UA_ORT_UNTYPED(CreateThreadingOptions);
  /* 122 */ UA_ORT_UNTYPED(ReleaseThreadingOptions);
  /* 123 */ UA_ORT_UNTYPED(ModelMetadataGetCustomMetadataMapKeys);
  /* 124 */ UA_ORT_UNTYPED(AddFreeDimensionOverrideByName);
  /* 125 */ UA_ORT_UNTYPED(GetAvailableProviders);
  /* 126 */ UA_ORT_UNTYPED(ReleaseAvailableProviders);
  /* 127 */ UA_ORT_UNTYPED(GetStringTensorElementLength);
  /* 128 */ UA_ORT_UNTYPED(GetStringTensorElement);
  /* 129 */ UA_ORT_UNTYPED(FillStringTensorElement);
  /* 130 */ OrtStatus*(ORT_API_CALL* AddSessionConfigEntry)(OrtSessionOptions* options, const char* config_key, const char* config_value) UA_ORT_NOEXCEPT;
  /* 131 */ OrtStatus*(ORT_API_CALL* CreateAllocator)(const OrtSession* session, const OrtMemoryInfo* mem_info, OrtAllocator** out) UA_ORT_NOEXCEPT;
  /* 132 */ void(ORT_API_CALL* ReleaseAllocator)(OrtAllocator* input) UA_ORT_NOEXCEPT;
  /* 133 */ OrtStatus*(ORT_API_CALL* RunWithBinding)(OrtSession* session, const OrtRunOptions* run_options, const OrtIoBinding* binding) UA_ORT_NOEXCEPT;
  /* 134 */ OrtStatus*(ORT_API_CALL* CreateIoBinding)(OrtSession* session, OrtIoBinding** out) UA_ORT_NOEXCEPT;
  /* 135 */ void(ORT_API_CALL* ReleaseIoBinding)(OrtIoBinding* input) UA_ORT_NOEXCEPT;
  /* 136 */ OrtStatus*(ORT_API_CALL* BindInput)(OrtIoBinding* binding, const char* name, const OrtValue* value) UA_ORT_NOEXCEPT;
  /* 137 */ OrtStatus*(ORT_API_CALL* BindOutput)(OrtIoBinding* binding, const char* name, const OrtValue* value) UA_ORT_NOEXCEPT;
  /* 138 */ OrtStatus*(ORT_API_CALL* BindOutputToDevice)(OrtIoBinding* binding, const char* name, const OrtMemoryInfo* mem_info) UA_ORT_NOEXCEPT;
  /* 139 */ UA_ORT_UNTYPED(GetBoundOutputNames);
  /* 140 */ OrtStatus*(ORT_API_CALL* GetBoundOutputValues)(const OrtIoBinding* binding, OrtAllocator* allocator, OrtValue*** output, size_t* output_count) UA_ORT_NOEXCEPT;
  /* 141 */ UA_ORT_UNTYPED(ClearBoundInputs);
  /* 142 */ UA_ORT_UNTYPED(ClearBoundOutputs);
  /* 143 */ UA_ORT_UNTYPED(TensorAt);
  /* 144 */ UA_ORT_UNTYPED(CreateAndRegisterAllocator);
  /* 145 */ UA_ORT_UNTYPED(SetLanguageProjection);
  /* 146 */ UA_ORT_UNTYPED(SessionGetProfilingStartTimeNs);
  /* 147 */ UA_ORT_UNTYPED(SetGlobalIntraOpNumThreads);
  /* 148 */ UA_ORT_UNTYPED(SetGlobalInterOpNumThreads);
  /* 149 */ UA_ORT_UNTYPED(SetGlobalSpinControl);
  /* 150 */ UA_ORT_UNTYPED(AddInitializer);
  /* 151 */ UA_ORT_UNTYPED(CreateEnvWithCustomLoggerAndGlobalThreadPools);
  /* 152 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_CUDA);
  /* 153 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_ROCM);
  /* 154 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_OpenVINO);
  /* 155 */ UA_ORT_UNTYPED(SetGlobalDenormalAsZero);
  /* 156 */ UA_ORT_UNTYPED(CreateArenaCfg);
  /* 157 */ UA_ORT_UNTYPED(ReleaseArenaCfg);
  /* 158 */ UA_ORT_UNTYPED(ModelMetadataGetGraphDescription);
  /* 159 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_TensorRT);
  /* 160 */ UA_ORT_UNTYPED(SetCurrentGpuDeviceId);
  /* 161 */ UA_ORT_UNTYPED(GetCurrentGpuDeviceId);
  /* 162 */ UA_ORT_UNTYPED(KernelInfoGetAttributeArray_float);
  /* 163 */ UA_ORT_UNTYPED(KernelInfoGetAttributeArray_int64);
  /* 164 */ UA_ORT_UNTYPED(CreateArenaCfgV2);
  /* 165 */ OrtStatus*(ORT_API_CALL* AddRunConfigEntry)(OrtRunOptions* options, const char* config_key, const char* config_value) UA_ORT_NOEXCEPT;
  /* 166 */ UA_ORT_UNTYPED(CreatePrepackedWeightsContainer);
  /* 167 */ UA_ORT_UNTYPED(ReleasePrepackedWeightsContainer);
  /* 168 */ UA_ORT_UNTYPED(CreateSessionWithPrepackedWeightsContainer);
  /* 169 */ UA_ORT_UNTYPED(CreateSessionFromArrayWithPrepackedWeightsContainer);
  /* 170 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_TensorRT_V2);
  /* 171 */ UA_ORT_UNTYPED(CreateTensorRTProviderOptions);
  /* 172 */ UA_ORT_UNTYPED(UpdateTensorRTProviderOptions);
  /* 173 */ UA_ORT_UNTYPED(GetTensorRTProviderOptionsAsString);
  /* 174 */ UA_ORT_UNTYPED(ReleaseTensorRTProviderOptions);
  /* 175 */ UA_ORT_UNTYPED(EnableOrtCustomOps);
  /* 176 */ UA_ORT_UNTYPED(RegisterAllocator);
  /* 177 */ UA_ORT_UNTYPED(UnregisterAllocator);
  /* 178 */ UA_ORT_UNTYPED(IsSparseTensor);
  /* 179 */ UA_ORT_UNTYPED(CreateSparseTensorAsOrtValue);
  /* 180 */ UA_ORT_UNTYPED(FillSparseTensorCoo);
  /* 181 */ UA_ORT_UNTYPED(FillSparseTensorCsr);
  /* 182 */ UA_ORT_UNTYPED(FillSparseTensorBlockSparse);
  /* 183 */ UA_ORT_UNTYPED(CreateSparseTensorWithValuesAsOrtValue);
  /* 184 */ UA_ORT_UNTYPED(UseCooIndices);
  /* 185 */ UA_ORT_UNTYPED(UseCsrIndices);
  /* 186 */ UA_ORT_UNTYPED(UseBlockSparseIndices);
  /* 187 */ UA_ORT_UNTYPED(GetSparseTensorFormat);
  /* 188 */ UA_ORT_UNTYPED(GetSparseTensorValuesTypeAndShape);
  /* 189 */ UA_ORT_UNTYPED(GetSparseTensorValues);
  /* 190 */ UA_ORT_UNTYPED(GetSparseTensorIndicesTypeShape);
  /* 191 */ UA_ORT_UNTYPED(GetSparseTensorIndices);
  /* 192 */ UA_ORT_UNTYPED(HasValue);
  /* 193 */ OrtStatus*(ORT_API_CALL* KernelContext_GetGPUComputeStream)(const OrtKernelContext* context, void** out) UA_ORT_NOEXCEPT;
  /* 194 */ OrtStatus*(ORT_API_CALL* GetTensorMemoryInfo)(const OrtValue* value, const OrtMemoryInfo** mem_info) UA_ORT_NOEXCEPT;
  /* 195 */ UA_ORT_UNTYPED(GetExecutionProviderApi);
  /* 196 */ UA_ORT_UNTYPED(SessionOptionsSetCustomCreateThreadFn);
  /* 197 */ UA_ORT_UNTYPED(SessionOptionsSetCustomThreadCreationOptions);
  /* 198 */ UA_ORT_UNTYPED(SessionOptionsSetCustomJoinThreadFn);
  /* 199 */ UA_ORT_UNTYPED(SetGlobalCustomCreateThreadFn);
  /* 200 */ UA_ORT_UNTYPED(SetGlobalCustomThreadCreationOptions);
  /* 201 */ UA_ORT_UNTYPED(SetGlobalCustomJoinThreadFn);
  /* 202 */ UA_ORT_UNTYPED(SynchronizeBoundInputs);
  /* 203 */ UA_ORT_UNTYPED(SynchronizeBoundOutputs);
  /* 204 */ OrtStatus*(ORT_API_CALL* SessionOptionsAppendExecutionProvider_CUDA_V2)(OrtSessionOptions* options, const OrtCUDAProviderOptionsV2* cuda_options) UA_ORT_NOEXCEPT;
  /* 205 */ OrtStatus*(ORT_API_CALL* CreateCUDAProviderOptions)(OrtCUDAProviderOptionsV2** out) UA_ORT_NOEXCEPT;
  /* 206 */ OrtStatus*(ORT_API_CALL* UpdateCUDAProviderOptions)(OrtCUDAProviderOptionsV2* cuda_options, const char* const* keys, const char* const* values, size_t num_keys) UA_ORT_NOEXCEPT;
  /* 207 */ UA_ORT_UNTYPED(GetCUDAProviderOptionsAsString);
  /* 208 */ void(ORT_API_CALL* ReleaseCUDAProviderOptions)(OrtCUDAProviderOptionsV2* input) UA_ORT_NOEXCEPT;
  /* 209 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_MIGraphX);
  /* 210 */ UA_ORT_UNTYPED(AddExternalInitializers);
  /* 211 */ UA_ORT_UNTYPED(CreateOpAttr);
  /* 212 */ UA_ORT_UNTYPED(ReleaseOpAttr);
  /* 213 */ UA_ORT_UNTYPED(CreateOp);
  /* 214 */ UA_ORT_UNTYPED(InvokeOp);
  /* 215 */ UA_ORT_UNTYPED(ReleaseOp);
  /* 216 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider);
  /* 217 */ UA_ORT_UNTYPED(CopyKernelInfo);
  /* 218 */ UA_ORT_UNTYPED(ReleaseKernelInfo);
  /* 219 */ UA_ORT_UNTYPED(GetTrainingApi);
  /* 220 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_CANN);
  /* 221 */ UA_ORT_UNTYPED(CreateCANNProviderOptions);
  /* 222 */ UA_ORT_UNTYPED(UpdateCANNProviderOptions);
  /* 223 */ UA_ORT_UNTYPED(GetCANNProviderOptionsAsString);
  /* 224 */ UA_ORT_UNTYPED(ReleaseCANNProviderOptions);
  /* 225 */ UA_ORT_UNTYPED(MemoryInfoGetDeviceType);
  /* 226 */ UA_ORT_UNTYPED(UpdateEnvWithCustomLogLevel);
  /* 227 */ UA_ORT_UNTYPED(SetGlobalIntraOpThreadAffinity);
  /* 228 */ OrtStatus*(ORT_API_CALL* RegisterCustomOpsLibrary_V2)(OrtSessionOptions* options, const char* library_path) UA_ORT_NOEXCEPT;
  /* 229 */ UA_ORT_UNTYPED(RegisterCustomOpsUsingFunction);
  /* 230 */ UA_ORT_UNTYPED(KernelInfo_GetInputCount);
  /* 231 */ UA_ORT_UNTYPED(KernelInfo_GetOutputCount);
  /* 232 */ UA_ORT_UNTYPED(KernelInfo_GetInputName);
  /* 233 */ UA_ORT_UNTYPED(KernelInfo_GetOutputName);
  /* 234 */ UA_ORT_UNTYPED(KernelInfo_GetInputTypeInfo);
  /* 235 */ UA_ORT_UNTYPED(KernelInfo_GetOutputTypeInfo);
  /* 236 */ UA_ORT_UNTYPED(KernelInfoGetAttribute_tensor);
  /* 237 */ OrtStatus*(ORT_API_CALL* HasSessionConfigEntry)(const OrtSessionOptions* options, const char* config_key, int* out) UA_ORT_NOEXCEPT;
  /* 238 */ OrtStatus*(ORT_API_CALL* GetSessionConfigEntry)(const OrtSessionOptions* options, const char* config_key, char* config_value, size_t* size) UA_ORT_NOEXCEPT;
  /* 239 */ UA_ORT_UNTYPED(SessionOptionsAppendExecutionProvider_Dnnl);
  /* 240 */ UA_ORT_UNTYPED(CreateDnnlProviderOptions);
  /* 241 */ UA_ORT_UNTYPED(UpdateDnnlProviderOptions);
  /* 242 */ UA_ORT_UNTYPED(GetDnnlProviderOptionsAsString);
  /* 243 */ UA_ORT_UNTYPED(ReleaseDnnlProviderOptions);
  /* 244 */ OrtStatus*(ORT_API_CALL* KernelInfo_GetNodeName)(const OrtKernelInfo* info, char* out, size_t* size) UA_ORT_NOEXCEPT;
  /* 245 */ UA_ORT_UNTYPED(KernelInfo_GetLogger);
  /* 246 */ UA_ORT_UNTYPED(KernelContext_GetLogger);
  /* 247 */ UA_ORT_UNTYPED(Logger_LogMessage);
  /* 248 */ UA_ORT_UNTYPED(Logger_GetLoggingSeverityLevel);
  /* 249 */ UA_ORT_UNTYPED(KernelInfoGetConstantInput_tensor);
  /* 250 */ UA_ORT_UNTYPED(CastTypeInfoToOptionalTypeInfo);
  /* 251 */ UA_ORT_UNTYPED(GetOptionalContainedTypeInfo);
  /* 252 */ UA_ORT_UNTYPED(GetResizedStringTensorElementBuffer);
  /* 253 */ OrtStatus*(ORT_API_CALL* KernelContext_GetAllocator)(const OrtKernelContext* context, const OrtMemoryInfo* mem_info, OrtAllocator** out) UA_ORT_NOEXCEPT;
  /* 254 */ UA_ORT_UNTYPED(GetBuildInfoString);
  /* 255 */ UA_ORT_UNTYPED(CreateROCMProviderOptions);
  /* 256 */ UA_ORT_UNTYPED(UpdateROCMProviderOptions);
  /* 257 */ UA_ORT_UNTYPED(GetROCMProviderOptionsAsString);
  /* 258 */ UA_ORT_UNTYPED(ReleaseROCMProviderOptions);
  /* 259 */ UA_ORT_UNTYPED(CreateAndRegisterAllocatorV2);
  /* 260 */ UA_ORT_UNTYPED(RunAsync);
  /* 261 */ UA_ORT_UNTYPED(UpdateTensorRTProviderOptionsWithValue);
  /* 262 */ UA_ORT_UNTYPED(GetTensorRTProviderOptionsByName);
  /* 263 */ UA_ORT_UNTYPED(UpdateCUDAProviderOptionsWithValue);
  /* 264 */ UA_ORT_UNTYPED(GetCUDAProviderOptionsByName);
  /* 265 */ OrtStatus*(ORT_API_CALL* KernelContext_GetResource)(const OrtKernelContext* context, int resource_version, int resource_id, void** resource) UA_ORT_NOEXCEPT;
  /* 266 */ UA_ORT_UNTYPED(SetUserLoggingFunction);
  /* 267 */ UA_ORT_UNTYPED(ShapeInferContext_GetInputCount);
  /* 268 */ UA_ORT_UNTYPED(ShapeInferContext_GetInputTypeShape);
  /* 269 */ UA_ORT_UNTYPED(ShapeInferContext_GetAttribute);
  /* 270 */ UA_ORT_UNTYPED(ShapeInferContext_SetOutputTypeShape);
  /* 271 */ UA_ORT_UNTYPED(SetSymbolicDimensions);
  /* 272 */ UA_ORT_UNTYPED(ReadOpAttr);
  /* 273 */ UA_ORT_UNTYPED(SetDeterministicCompute);
  /* 274 */ OrtStatus*(ORT_API_CALL* KernelContext_ParallelFor)(const OrtKernelContext* context, void (*fn)(void* user_data, size_t index), size_t total, size_t num_batch, void* user_data) UA_ORT_NOEXCEPT;
};

#define UA_ORT_AT(name, index)                                             \
  UA_ORT_STATIC_ASSERT(offsetof(OrtApi, name) == (index) * sizeof(void*), \
                       "OrtApi::" #name " must be entry " #index)
UA_ORT_AT(CreateStatus, 0);
UA_ORT_AT(GetErrorMessage, 2);
UA_ORT_AT(CreateEnv, 3);
UA_ORT_AT(CreateEnvWithCustomLogger, 4);
UA_ORT_AT(CreateSession, 7);
UA_ORT_AT(CreateSessionOptions, 10);
UA_ORT_AT(EnableProfiling, 14);
UA_ORT_AT(SetSessionLogSeverityLevel, 22);
UA_ORT_AT(SetIntraOpNumThreads, 24);
UA_ORT_AT(CreateCustomOpDomain, 26);
UA_ORT_AT(CustomOpDomain_Add, 27);
UA_ORT_AT(AddCustomOpDomain, 28);
UA_ORT_AT(SessionGetInputCount, 30);
UA_ORT_AT(SessionGetOutputCount, 31);
UA_ORT_AT(SessionGetInputName, 36);
UA_ORT_AT(SessionGetOutputName, 37);
UA_ORT_AT(CreateRunOptions, 39);
UA_ORT_AT(CreateTensorAsOrtValue, 48);
UA_ORT_AT(CreateTensorWithDataAsOrtValue, 49);
UA_ORT_AT(GetTensorMutableData, 51);
UA_ORT_AT(GetTensorElementType, 60);
UA_ORT_AT(GetDimensionsCount, 61);
UA_ORT_AT(GetDimensions, 62);
UA_ORT_AT(GetTensorTypeAndShape, 65);
UA_ORT_AT(CreateMemoryInfo, 68);
UA_ORT_AT(CreateCpuMemoryInfo, 69);
UA_ORT_AT(AllocatorAlloc, 75);
UA_ORT_AT(AllocatorFree, 76);
UA_ORT_AT(GetAllocatorWithDefaultOptions, 78);
UA_ORT_AT(KernelInfoGetAttribute_float, 85);
UA_ORT_AT(KernelInfoGetAttribute_int64, 86);
UA_ORT_AT(KernelInfoGetAttribute_string, 87);
UA_ORT_AT(KernelContext_GetOutputCount, 89);
UA_ORT_AT(KernelContext_GetInput, 90);
UA_ORT_AT(KernelContext_GetOutput, 91);
UA_ORT_AT(ReleaseEnv, 92);
UA_ORT_AT(ReleaseStatus, 93);
UA_ORT_AT(ReleaseMemoryInfo, 94);
UA_ORT_AT(ReleaseSession, 95);
UA_ORT_AT(ReleaseValue, 96);
UA_ORT_AT(ReleaseRunOptions, 97);
UA_ORT_AT(ReleaseTensorTypeAndShapeInfo, 99);
UA_ORT_AT(ReleaseSessionOptions, 100);
UA_ORT_AT(ReleaseCustomOpDomain, 101);
UA_ORT_AT(SessionEndProfiling, 110);
UA_ORT_AT(CreateAllocator, 131);
UA_ORT_AT(ReleaseAllocator, 132);
UA_ORT_AT(RunWithBinding, 133);
UA_ORT_AT(CreateIoBinding, 134);
UA_ORT_AT(ReleaseIoBinding, 135);
UA_ORT_AT(BindInput, 136);
UA_ORT_AT(BindOutput, 137);
UA_ORT_AT(BindOutputToDevice, 138);
UA_ORT_AT(GetBoundOutputValues, 140);
UA_ORT_AT(AddSessionConfigEntry, 130);
UA_ORT_AT(AddRunConfigEntry, 165);
UA_ORT_AT(KernelContext_GetGPUComputeStream, 193);
UA_ORT_AT(GetTensorMemoryInfo, 194);
UA_ORT_AT(SessionOptionsAppendExecutionProvider_CUDA_V2, 204);
UA_ORT_AT(CreateCUDAProviderOptions, 205);
UA_ORT_AT(UpdateCUDAProviderOptions, 206);
UA_ORT_AT(ReleaseCUDAProviderOptions, 208);
UA_ORT_AT(RegisterCustomOpsLibrary_V2, 228);
UA_ORT_AT(HasSessionConfigEntry, 237);
UA_ORT_AT(GetSessionConfigEntry, 238);
UA_ORT_AT(KernelInfo_GetNodeName, 244);
UA_ORT_AT(KernelContext_GetAllocator, 253);
UA_ORT_AT(KernelContext_GetResource, 265);
UA_ORT_AT(KernelContext_ParallelFor, 274);

/* The custom op as ORT reads it when `version` is 18 (later fields exist only for ops
 * declaring a higher version, so they are not declared here). */
struct OrtCustomOp {
  uint32_t version;
  void*(ORT_API_CALL* CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char*(ORT_API_CALL* GetName)(const OrtCustomOp* op);
  const char*(ORT_API_CALL* GetExecutionProviderType)(const OrtCustomOp* op); /* NULL = CPU */
  ONNXTensorElementDataType(ORT_API_CALL* GetInputType)(const OrtCustomOp* op, size_t index);
  size_t(ORT_API_CALL* GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType(ORT_API_CALL* GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t(ORT_API_CALL* GetOutputTypeCount)(const OrtCustomOp* op);
  void(ORT_API_CALL* KernelCompute)(void* kernel, OrtKernelContext* context);
  void(ORT_API_CALL* KernelDestroy)(void* kernel);
  /* version >= 8 */
  OrtCustomOpInputOutputCharacteristic(ORT_API_CALL* GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtCustomOpInputOutputCharacteristic(ORT_API_CALL* GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  /* version >= 13 */
  OrtMemType(ORT_API_CALL* GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  /* version >= 14 */
  int(ORT_API_CALL* GetVariadicInputMinArity)(const OrtCustomOp* op);
  int(ORT_API_CALL* GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int(ORT_API_CALL* GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int(ORT_API_CALL* GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  /* version >= 16: used instead of CreateKernel / KernelCompute when set */
  OrtStatus*(ORT_API_CALL* CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                           void** kernel);
  OrtStatus*(ORT_API_CALL* KernelComputeV2)(void* kernel, OrtKernelContext* context);
  /* version >= 17 */
  UA_ORT_UNTYPED(InferOutputShapeFn); /* unused: NULL */
  int(ORT_API_CALL* GetStartVersion)(const OrtCustomOp* op);
  int(ORT_API_CALL* GetEndVersion)(const OrtCustomOp* op);
  /* version >= 18: output output_index[i] may reuse the buffer of input input_index[i]; the
   * arrays are the op's to allocate and release. */
  size_t(ORT_API_CALL* GetMayInplace)(int** input_index, int** output_index);
  void(ORT_API_CALL* ReleaseMayInplace)(int* input_index, int* output_index);
  /* Read from version 18 on as well (must be NULL or valid): outputs that always alias inputs. */
  size_t(ORT_API_CALL* GetAliasMap)(int** input_index, int** output_index);
  void(ORT_API_CALL* ReleaseAliasMap)(int* input_index, int* output_index);
};

#define UA_ORT_OP_FIELD(name, index)                                                                        \
  UA_ORT_STATIC_ASSERT(offsetof(OrtCustomOp, name) == offsetof(OrtCustomOp, CreateKernel) + (index) * sizeof(void*), \
                       "OrtCustomOp::" #name " must be function pointer " #index)
UA_ORT_OP_FIELD(KernelDestroy, 8);
UA_ORT_OP_FIELD(GetInputMemoryType, 11);
UA_ORT_OP_FIELD(KernelComputeV2, 17);
UA_ORT_OP_FIELD(GetStartVersion, 19);
UA_ORT_OP_FIELD(ReleaseMayInplace, 22);
UA_ORT_OP_FIELD(ReleaseAliasMap, 24);

#ifdef __cplusplus
}
#endif

#endif /* UNIATTN_ORT_ABI_H */
