// Settings that libtensorflow reads from the process environment once, when it loads. A worker
// thread's process.env is a copy of its own: setting a variable there never reaches the getenv()
// of a native library. So the thread that loads the native backend sets them (a site Pod's main
// thread), and so does the process that starts a pool of site threads, before it starts them.
export function applyNativeDefaults(env: NodeJS.ProcessEnv = process.env): void {
  // Keep TF's C++ banner quiet.
  env.TF_CPP_MIN_LOG_LEVEL ??= '2';
  // oneDNN's graph rewrites cost more than they save on the small per-site models (make bench:
  // 1.05-1.5x faster without).
  env.TF_ENABLE_ONEDNN_OPTS ??= '0';
}
