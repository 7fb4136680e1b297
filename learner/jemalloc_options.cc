// jemalloc's settings for the binaries that run the learner's trainer (pmdrl-learner,
// learner_bench); linked in by pmdrl_link_jemalloc (CMakeLists.txt). jemalloc reads this
// symbol when it starts; MALLOC_CONF in the environment still overrides it.
//
// An update allocates and frees activations of tens to hundreds of MB per layer. With
// jemalloc's defaults (freed pages returned within 10 s, 4 KiB pages) an update of the
// 0.5B shape faulted about 4 million fresh pages in, and the kernel's page zeroing and
// fault handling took a third of the update's CPU time. Huge pages for jemalloc's
// extents cut the faults about 16×, and keeping freed pages 30 s (longer than one
// micro-batch's forward and backward) lets the next micro-batch reuse them.
// learner_bench (rows 4, 128 + 128 tokens, micro_batch_tokens 1024, fp32, OpenMP passive)
// measured the second update at 29.5 s with the defaults and 22.0 s with these, at the
// same peak resident memory within 0.6 GB (10.8 and 11.3 GB). The demo's learner (0.4 M
// parameters, 1 thread) trained 10.9k tokens/s with these and 9.6k with the defaults.
extern "C" {
// NOLINTNEXTLINE: the name and type are jemalloc's interface.
const char* malloc_conf = "thp:always,dirty_decay_ms:30000";
}
