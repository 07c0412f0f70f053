/**
 * ONNX Runtime's official builds (1.30 and later) collect usage telemetry on Linux too: they keep a
 * device id and an event queue in ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and send the events
 * when a network is there. itera runs on users' devices with their data and their SD cards, so it
 * turns that off unless the user set ORT_DISABLE_TELEMETRY themselves (docs/runtime.md). ONNX
 * Runtime reads the variable when it creates its environment, with the first session: call this
 * before any InferenceSession.create.
 */
export function disableOrtTelemetry(): void {
  process.env.ORT_DISABLE_TELEMETRY ??= "1";
}
