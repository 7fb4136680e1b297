// The rollout actor's service loop (docs/design.md "Data flow" steps 1-3, 6-7): register with
// the coordinator, hold the current policy weights, then repeatedly lease prompts,
// sample a group of k completions per prompt and hand each group to a verifier.
#ifndef PMDRL_ACTOR_ACTOR_H_
#define PMDRL_ACTOR_ACTOR_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/config.h"
#include "common/metrics.h"

namespace pmdrl {

struct ActorOptions {
  ActorConfig config;     // the `actor` section
  uint64_t run_seed = 1;  // run.seed: with the actor's name, the default sampling seed
  std::string token;      // bearer token for the coordinator and the verifiers
  // Registration is retried this long before Run gives up; afterwards, the coordinator
  // counts as lost when no RPC to it has succeeded for this long.
  std::chrono::milliseconds coordinator_timeout{60000};
  std::chrono::milliseconds heartbeat_interval{2000};
};

// The sampling seed an actor uses when actor.seed is 0: a fixed mix of run.seed and
// the actor's name, so actors of one run draw different samples and a rerun draws the
// same ones.
uint64_t DeriveActorSeed(uint64_t run_seed, const std::string& actor_name);

// One actor. Promises: nothing is generated before the weights of the version current
// at registration are loaded; each group is sampled entirely by one version, at least the
// version the coordinator named with its lease (weights are swapped only when the engine
// has drained, never to an older version except after the coordinator restarted from an
// older checkpoint), and is stamped with that version. A coordinator that answers NotFound
// for the actor's id has restarted: the actor registers again (same name), drops the
// leases of the old one unsent, and goes on with its engine. Leases are
// taken while the engine has room for a group (actor.max_rows), and each finished group
// goes to a sender thread, so generation waits for acks only when actor.send_window groups
// are outstanding. Owns its threads (weight feed, heartbeat, sender) and RPC clients;
// `metrics` is not owned and must outlive the actor.
class Actor {
 public:
  Actor(ActorOptions options, MetricsRegistry* metrics);
  ~Actor();
  Actor(const Actor&) = delete;
  Actor& operator=(const Actor&) = delete;

  // Runs until the coordinator says the run is finished or Stop() is called (OK), or
  // until a fatal error: the coordinator never answered or was lost, the bearer token
  // was refused, the model it described cannot be built or loaded, or it restarted
  // with a different group size, task, tokenizer or model.
  absl::Status Run();

  // Asks Run to return: it stops at the next wait or engine step (groups already
  // generated get one send attempt each; leases in the engine expire and are re-issued).
  // Thread-safe, callable before or during Run; not async-signal-safe.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pmdrl

#endif  // PMDRL_ACTOR_ACTOR_H_
