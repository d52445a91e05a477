//! Runtimes that execute models: ONNX Runtime (`ort`, loaded dynamically) and tract.
