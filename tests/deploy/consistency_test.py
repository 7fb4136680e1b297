#!/usr/bin/env python3
"""Keeps the deployment files true to the code.

usage: consistency_test.py SOURCE_DIR [BINARY_DIR]

Everything compared here is read from the code, never from a copied list:
  * config keys: the binaries' --help (BINARY_DIR/{learner,actor,verifier}/pmdrl-*) when
    they are built, else the key table of common/config.cc (Make("section.key", ...));
  * metric names and types: Counter/Gauge/Histogram registrations in actor/, verifier/,
    learner/ (string literals, or a constant holding the literal);
  * binary paths: add_executable() in each component's CMakeLists.txt;
  * runtime packages: the Debian packages owning the shared libraries the built binaries
    need (readelf NEEDED + ldd + dpkg -S), when they are built.
Each failed check prints what differs and where; the exit status is 1 if any failed.
"""
import json
import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:
    sys.exit("FAIL: Python's yaml module is missing; run scripts/install-deps "
             "(docker-compose brings python3-yaml)")

SRC = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.getcwd()
BIN = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else ""
FAILURES = []
CHECKS = [0]


def check(ok, what):
    CHECKS[0] += 1
    if not ok:
        FAILURES.append(what)
        print("FAIL:", what)
    return ok


def read(rel):
    with open(os.path.join(SRC, rel), encoding="utf-8") as f:
        return f.read()


def load_yaml_all(rel):
    return [d for d in yaml.safe_load_all(read(rel)) if d is not None]


# ---------------------------------------------------------------- config keys
def config_keys():
    """The set of --section.key flags the binaries accept, and where it came from."""
    binaries = [os.path.join(BIN, d, "pmdrl-" + d) for d in ("learner", "actor", "verifier")]
    if BIN and all(os.access(b, os.X_OK) for b in binaries):
        keys = set()
        for b in binaries:
            out = subprocess.run([b, "--help"], capture_output=True, text=True, timeout=60)
            found = re.findall(r"^\s+--([a-z_]+\.[a-z_]+) \[", out.stdout + out.stderr, re.M)
            check(len(found) > 20, f"{b} --help lists config keys (found {len(found)})")
            keys |= set(found)
        return keys, "--help of the built binaries"
    keys = set(re.findall(r'Make\(\s*"([a-z_]+\.[a-z_]+)"', read("common/config.cc")))
    check(len(keys) > 20, f"common/config.cc key table parsed ({len(keys)} keys)")
    return keys, "common/config.cc"


KEYS, KEYS_FROM = config_keys()
print(f"config keys: {len(KEYS)} from {KEYS_FROM}")


def flags_of(args):
    """{'section.key': value} of the --section.key=value flags in an argument list."""
    out = {}
    for a in args:
        m = re.fullmatch(r"--([a-z_]+\.[a-z_]+)=(.*)", str(a))
        if m:
            out[m.group(1)] = m.group(2)
    return out


def check_flags(args, where):
    for a in args:
        a = str(a)
        if a.startswith("--") and "." in a.split("=")[0]:
            key = a[2:].split("=")[0]
            check(key in KEYS, f"{where}: flag --{key} is not a config key ({KEYS_FROM})")


def host_port(target, where):
    m = re.fullmatch(r"(?:dns:///)?([A-Za-z0-9.\-]+):(\d+)", target)
    check(m is not None, f"{where}: '{target}' is host:port or dns:///host:port")
    return (m.group(1), int(m.group(2))) if m else ("", 0)


# ---------------------------------------------------------------- metrics
def registered_metrics():
    """{name: 'counter'|'gauge'|'histogram'} and {name: set(label keys)} from the sources."""
    types, labels = {}, {}
    for comp in ("actor", "verifier", "learner"):
        for root, _, files in os.walk(os.path.join(SRC, comp)):
            for fn in files:
                if not fn.endswith((".cc", ".h")) or fn.endswith("_test.cc"):
                    continue
                text = open(os.path.join(root, fn), encoding="utf-8").read()
                consts = dict(
                    (m.group(1), m.group(2))
                    for m in re.finditer(r'(\w+)(?:\[\])?\s*=\s*"(pmdrl_\w+)"', text))
                for m in re.finditer(r'\b(Counter|Gauge|Histogram)\(\s*("(pmdrl_\w+)"|(\w+))',
                                     text):
                    name = m.group(3) or consts.get(m.group(4))
                    if not name:
                        continue
                    types[name] = m.group(1).lower()
                    # Label keys given in this call: {{"key", ...}}.
                    call = text[m.end():m.end() + 400].split(";")[0]
                    labels.setdefault(name, set()).update(re.findall(r'\{\{?\s*"(\w+)"\s*,', call))
    return types, labels


METRICS, METRIC_LABELS = registered_metrics()
print(f"metrics registered in the code: {len(METRICS)}")
check(len(METRICS) >= 20, f"found the metric registrations ({len(METRICS)})")


def resolve_metric(series):
    """The registered metric a series name refers to (histograms: _bucket/_sum/_count)."""
    if series in METRICS and METRICS[series] != "histogram":
        return series
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and METRICS.get(series[:-len(suffix)]) == "histogram":
            return series[:-len(suffix)]
    return None


# ---------------------------------------------------------------- compose
compose = load_yaml_all("deploy/docker-compose.yml")[0]
services = compose["services"]
for name in ("learner", "actor", "verifier", "prometheus", "grafana"):
    check(name in services, f"docker-compose.yml has service '{name}'")


def svc_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def svc_cmd(svc):
    return [str(a) for a in (svc.get("command") or [])]


BINARY_OF = {"learner": "pmdrl-learner", "learner-gpu": "pmdrl-learner",
             "actor": "pmdrl-actor", "actor-gpu": "pmdrl-actor", "verifier": "pmdrl-verifier"}
for name, svc in services.items():
    cmd = svc_cmd(svc)
    if name in BINARY_OF or name == "base":
        check_flags(cmd, f"compose service {name}")
    if name in BINARY_OF:
        check(cmd[:1] == [BINARY_OF[name]], f"compose service {name} runs {BINARY_OF[name]}")
        check("PMDRL_METRICS_PORT" in svc_env(svc),
              f"compose service {name} sets PMDRL_METRICS_PORT (its /metrics and HEALTHCHECK port)")

# Scaling: `docker compose up --scale actor=8 --scale verifier=4` needs replicas without a
# fixed container name or host port.
for name in ("actor", "verifier", "actor-gpu"):
    svc = services.get(name, {})
    check("container_name" not in svc, f"compose service {name} has no container_name (scales)")
    check("ports" not in svc, f"compose service {name} publishes no host ports (scales)")

learner_flags = flags_of(svc_cmd(services["learner"]))
verifier_flags = flags_of(svc_cmd(services["verifier"]))
actor_flags = flags_of(svc_cmd(services["actor"]))
_, learner_port = host_port(learner_flags.get("learner.listen", ""), "learner.listen")
_, verifier_port = host_port(verifier_flags.get("verifier.listen", ""), "verifier.listen")
check(learner_flags.get("learner.listen", "").startswith("0.0.0.0:"),
      "learner.listen binds all interfaces (other containers dial it)")
check(verifier_flags.get("verifier.listen", "").startswith("0.0.0.0:"),
      "verifier.listen binds all interfaces")
for svc_name, flags, key in (("actor", actor_flags, "actor.coordinator"),
                             ("verifier", verifier_flags, "verifier.learner"),
                             ("actor-gpu", flags_of(svc_cmd(services.get("actor-gpu", {}))),
                              "actor.coordinator")):
    host, port = host_port(flags.get(key, ""), f"{svc_name} {key}")
    check(host == "learner" and port == learner_port,
          f"{svc_name} {key}={flags.get(key)} is learner:{learner_port} (learner.listen)")
for svc_name in ("actor", "actor-gpu"):
    target = flags_of(svc_cmd(services.get(svc_name, {}))).get("actor.verifiers", "")
    host, port = host_port(target, f"{svc_name} actor.verifiers")
    check(target.startswith("dns:///") and host == "verifier" and port == verifier_port,
          f"{svc_name} actor.verifiers={target} is dns:///verifier:{verifier_port} "
          "(every replica)")
# The GPU variants answer to the CPU services' DNS names.
for gpu, cpu in (("learner-gpu", "learner"), ("actor-gpu", "actor")):
    svc = services.get(gpu, {})
    aliases = (((svc.get("networks") or {}).get("default") or {}).get("aliases") or [])
    check(cpu in aliases, f"compose service {gpu} has network alias {cpu}")
    check("gpu" in (svc.get("profiles") or []), f"compose service {gpu} is in profile gpu")
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations")
               or {}).get("devices") or []
    check(any("gpu" in (d.get("capabilities") or []) for d in devices),
          f"compose service {gpu} reserves a GPU")
    check("Dockerfile.cuda" in str((svc.get("build") or {}).get("dockerfile")),
          f"compose service {gpu} builds docker/Dockerfile.cuda")
    check(svc_env(svc).get("PMDRL_METRICS_PORT") == svc_env(services[cpu]).get("PMDRL_METRICS_PORT"),
          f"compose service {gpu} uses {cpu}'s metrics port")
check(flags_of(svc_cmd(services.get("learner-gpu", {}))).get("learner.device") == "cuda",
      "learner-gpu trains with learner.device=cuda")
# The token reaches the binaries as $PMDRL_TOKEN or through run.token_file (common/auth.h).
auth_h = read("common/auth.h")
check("PMDRL_TOKEN" in auth_h, "common/auth.h still reads $PMDRL_TOKEN")
for name in BINARY_OF:
    if name in services:
        env = svc_env(services[name])
        check("PMDRL_TOKEN" in env and "pmdrl_token" in str(services[name].get("secrets")),
              f"compose service {name} gets the token (PMDRL_TOKEN and the pmdrl_token secret)")

# ---------------------------------------------------------------- prometheus
prom = load_yaml_all("deploy/prometheus.yml")[0]
jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
for name in ("learner", "actor", "verifier"):
    job = jobs.get(name)
    if not check(job is not None, f"prometheus.yml has job {name}"):
        continue
    sd = (job.get("dns_sd_configs") or [{}])[0]
    port = svc_env(services[name]).get("PMDRL_METRICS_PORT")
    check(sd.get("type") == "A" and sd.get("names") == [name],
          f"prometheus job {name} discovers every replica (dns_sd A record of '{name}')")
    check(str(sd.get("port")) == port,
          f"prometheus job {name} scrapes port {sd.get('port')} = compose PMDRL_METRICS_PORT {port}")
    check(port in [str(p) for p in services[name].get("expose", [])],
          f"compose service {name} exposes its metrics port {port}")
prom_mount = " ".join(str(v) for v in services["prometheus"].get("volumes", []))
check("./prometheus.yml:" in prom_mount, "compose mounts deploy/prometheus.yml into prometheus")

# ---------------------------------------------------------------- grafana
ds = load_yaml_all("deploy/grafana/provisioning/datasources/prometheus.yml")[0]["datasources"][0]
check(ds["url"].startswith("http://prometheus:"), "grafana data source points at the prometheus service")
provider = load_yaml_all("deploy/grafana/provisioning/dashboards/pmdrl.yml")[0]["providers"][0]
graf_mounts = [str(v) for v in services["grafana"].get("volumes", [])]
check(any(v.startswith("./grafana/dashboards:" + provider["options"]["path"]) for v in graf_mounts),
      "grafana mounts deploy/grafana/dashboards where the provider reads dashboards")
check(any(v.startswith("./grafana/provisioning:/etc/grafana/provisioning") for v in graf_mounts),
      "grafana mounts the provisioning folder")
dash = json.loads(read("deploy/grafana/dashboards/pmdrl.json"))
used = {}
for panel in dash["panels"]:
    check(panel.get("datasource", {}).get("uid") == ds["uid"],
          f"panel '{panel['title']}' uses data source uid {ds['uid']}")
    for t in panel.get("targets", []):
        for series in re.findall(r"\bpmdrl_\w+", t["expr"]):
            used.setdefault(series, []).append(panel["title"])
        # Label matchers and by() clauses name labels the metric really has.
        for series, matchers in re.findall(r"\b(pmdrl_\w+)\{([^}]*)\}", t["expr"]):
            base = resolve_metric(series)
            for label in re.findall(r"(\w+)\s*[!=]~?", matchers):
                check(base is not None and label in METRIC_LABELS.get(base, set()),
                      f"panel '{panel['title']}': {series} has label '{label}' in the code")
        for labels, series in re.findall(r"by \(([^)]*)\) \(\w*\(?(pmdrl_\w+)", t["expr"]):
            base = resolve_metric(series)
            for label in (l.strip() for l in labels.split(",")):
                if label in ("le", "instance", "job"):
                    continue
                check(base is not None and label in METRIC_LABELS.get(base, set()),
                      f"panel '{panel['title']}': {series} has label '{label}' in the code")
for series, titles in sorted(used.items()):
    check(resolve_metric(series) is not None,
          f"dashboard metric {series} (panels {sorted(set(titles))}) is registered in the code "
          "(histograms only as _bucket/_sum/_count)")
print(f"dashboard uses {len(used)} series")
# The panels the issue asks for: each needs its metric on the dashboard.
required = {
    "generation tokens/s": "pmdrl_actor_generated_tokens_total",
    "verifier outcomes": "pmdrl_verifier_completions_total",
    "verifier latency": "pmdrl_verifier_score_seconds_bucket",
    "learner update time": "pmdrl_learner_step_seconds",
    "reward": "pmdrl_learner_mean_reward",
    "eval accuracy": "pmdrl_learner_eval_accuracy",
    "staleness": "pmdrl_learner_staleness_versions_bucket",
    "dropped (stale) groups": "pmdrl_learner_groups_total",
    "weight-sync time": "pmdrl_learner_weight_sync_seconds_bucket",
    "weight-sync bytes": "pmdrl_learner_weight_sync_bytes_total",
}
for what, series in required.items():
    check(series in used, f"dashboard shows {what} ({series})")

# ---------------------------------------------------------------- Dockerfiles
cmake_bins = {}
for comp in ("learner", "actor", "verifier", "cli"):
    for exe in re.findall(r"add_executable\((\S+)", read(f"{comp}/CMakeLists.txt")):
        cmake_bins[f"build/{comp}/{exe}"] = exe
entry = read("docker/entrypoint.sh")
for df in ("docker/Dockerfile.cpu", "docker/Dockerfile.cuda"):
    text = read(df)
    paths = set(re.findall(r"build/(?:learner|actor|verifier|cli)/[\w\-]+", text))
    for p in ("build/learner/pmdrl-learner", "build/actor/pmdrl-actor",
              "build/verifier/pmdrl-verifier", "build/cli/pmdrl"):
        check(p in cmake_bins and p in paths, f"{df} copies {p} (an add_executable target)")
    for p in paths:
        check(p in cmake_bins, f"{df}: {p} is an add_executable output")
    check("-DPMDRL_BUILD_TESTS=OFF" in text and "Release" in text,
          f"{df} builds Release without tests")
    check(re.search(r"^USER (?!root)\w+", text, re.M) is not None, f"{df} runs as a non-root user")
    check(re.search(r"HEALTHCHECK .*\n?.*curl .*/healthz", text) is not None,
          f"{df} HEALTHCHECK polls /healthz with curl")
    check("COPY examples" in text, f"{df} copies examples/")
    check(len(re.findall(r"^FROM ", text, re.M)) >= 2, f"{df} is multi-stage")
cpu = read("docker/Dockerfile.cpu")
check(re.search(r"^FROM debian:12", cpu, re.M) is not None, "Dockerfile.cpu is based on Debian 12")
check("scripts/install-deps" in cpu, "Dockerfile.cpu installs build packages with scripts/install-deps")
cuda = read("docker/Dockerfile.cuda")
check(re.search(r"^FROM nvidia/cuda:", cuda, re.M) is not None, "Dockerfile.cuda is based on nvidia/cuda")
check("torch.utils.cmake_prefix_path" in cuda, "Dockerfile.cuda builds against pip's LibTorch")
# Flags the entrypoint adds must be config keys too ($section is actor or verifier).
for key in re.findall(r"--([a-z_$]+\.[a-z_]+)=", entry):
    for k in ([key.replace("$section", s) for s in ("actor", "verifier")] if "$" in key else [key]):
        check(k in KEYS, f"docker/entrypoint.sh adds --{k}, a config key")

# Runtime packages of Dockerfile.cpu against the libraries the built binaries need.
built = [os.path.join(BIN, p[len("build/"):]) for p in cmake_bins]
if BIN and all(os.access(b, os.X_OK) for b in built) and shutil.which("dpkg") \
        and shutil.which("readelf") and shutil.which("ldd"):
    runtime = cpu.split("AS runtime", 1)[1]
    install = re.search(r"apt-get install[^&]*", runtime).group(0)
    listed = set(re.findall(r"\b(lib[\w.+\-]+|ca-certificates|curl)\b", install))
    base_ok = {"libc6", "libgcc-s1", "libstdc++6"}  # in debian:12-slim already
    missing = {}
    for b in built:
        needed = re.findall(r"\(NEEDED\).*\[(.+)\]", subprocess.run(
            ["readelf", "-d", b], capture_output=True, text=True).stdout)
        resolved = dict(re.findall(r"^\s*(\S+) => (/\S+)", subprocess.run(
            ["ldd", b], capture_output=True, text=True).stdout, re.M))
        for so in needed:
            path = resolved.get(so)
            if not path or path.startswith("/usr/local/"):
                continue  # CUDA toolkit libraries of a local build: not in the CPU image
            pkg = None
            for p in (path, "/usr" + path, os.path.realpath(path)):
                r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
                if r.returncode == 0:
                    pkg = r.stdout.split(":")[0]
                    break
            if pkg and pkg not in listed and pkg not in base_ok:
                missing.setdefault(pkg, set()).add(f"{os.path.basename(b)}:{so}")
    check(not missing, f"Dockerfile.cpu runtime stage installs the packages of every library "
                       f"the binaries link; missing: {missing}")
else:
    print("note: binaries not built in BINARY_DIR: runtime package check skipped")

# ---------------------------------------------------------------- Kubernetes
docs = []
for fn in sorted(os.listdir(os.path.join(SRC, "deploy/k8s"))):
    if fn.endswith(".yaml"):
        docs += [(fn, d) for d in load_yaml_all(f"deploy/k8s/{fn}")]
by_kind = {}
for fn, d in docs:
    check(d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"),
          f"k8s {fn}: document has apiVersion, kind and metadata.name")
    if d["kind"] != "Namespace":
        check(d["metadata"].get("namespace") == "pmdrl", f"k8s {fn}: {d['kind']} in namespace pmdrl")
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
for kind in ("Namespace", "Secret", "StatefulSet", "Deployment", "Service",
             "HorizontalPodAutoscaler", "PersistentVolumeClaim"):
    check(kind in by_kind, f"k8s manifests include a {kind}")
secrets = by_kind.get("Secret", {})
pvcs = by_kind.get("PersistentVolumeClaim", {})
k8s_services = by_kind.get("Service", {})
workloads = list(by_kind.get("StatefulSet", {}).values()) + list(by_kind.get("Deployment", {}).values())
k8s_binary = {}
for w in workloads:
    spec = w["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = [str(a) for a in c.get("args", [])]
    name = w["metadata"]["name"]
    k8s_binary[name] = args[0] if args else ""
    check_flags(args, f"k8s {name}")
    env = {e["name"]: e for e in c.get("env", [])}
    for e in env.values():
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            check(ref["key"] in (secrets.get(ref["name"], {}).get("stringData") or {}),
                  f"k8s {name}: secret {ref['name']}/{ref['key']} exists")
    check("PMDRL_TOKEN" in env, f"k8s {name}: token from the Secret as PMDRL_TOKEN")
    mport = env.get("PMDRL_METRICS_PORT", {}).get("value")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(mport is not None and str(ports.get("metrics")) == mport,
          f"k8s {name}: metrics containerPort = PMDRL_METRICS_PORT ({mport})")
    check(str(w["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")) == mport,
          f"k8s {name}: prometheus.io/port annotation = metrics port")
    compose_port = svc_env(services.get(name, {})).get("PMDRL_METRICS_PORT")
    check(compose_port == mport, f"k8s {name}: metrics port {mport} = compose's {compose_port}")
    for v in spec.get("volumes", []):
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim:
            check(claim in pvcs, f"k8s {name}: PVC {claim} exists")
check(k8s_binary.get("learner") == "pmdrl-learner" and k8s_binary.get("actor") == "pmdrl-actor"
      and k8s_binary.get("verifier") == "pmdrl-verifier",
      f"k8s workloads run the right binaries: {k8s_binary}")
sts = by_kind.get("StatefulSet", {}).get("learner")
if check(sts is not None, "k8s learner is a StatefulSet"):
    c = sts["spec"]["template"]["spec"]["containers"][0]
    f = flags_of(c["args"])
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(f.get("learner.world_size") == str(sts["spec"]["replicas"]),
          f"learner.world_size {f.get('learner.world_size')} = StatefulSet replicas {sts['spec']['replicas']}")
    check(env.get("PMDRL_RANK_FROM_HOSTNAME") == "1" and "PMDRL_RANK_FROM_HOSTNAME" in entry,
          "learner rank comes from the pod ordinal (entrypoint PMDRL_RANK_FROM_HOSTNAME)")
    headless = sts["spec"]["serviceName"]
    hs = k8s_services.get(headless, {}).get("spec", {})
    check(hs.get("clusterIP") == "None", f"StatefulSet service {headless} is headless")
    rhost, rport = host_port(f.get("learner.rendezvous", ""), "k8s learner.rendezvous")
    check(rhost.startswith(f"learner-0.{headless}"), f"rendezvous {rhost} is rank 0's pod name")
    check(rport in [p["port"] for p in hs.get("ports", [])], f"rendezvous port {rport} in {headless}")
    check(f.get("learner.device") == "cuda", "k8s learner trains on cuda")
    _, klport = host_port(f.get("learner.listen", ""), "k8s learner.listen")
    check(klport == learner_port, "k8s learner.listen port = compose's")
for name, key in (("actor", "actor.coordinator"), ("verifier", "verifier.learner")):
    d = by_kind.get("Deployment", {}).get(name)
    if not check(d is not None, f"k8s {name} is a Deployment"):
        continue
    f = flags_of(d["spec"]["template"]["spec"]["containers"][0]["args"])
    host, port = host_port(f.get(key, ""), f"k8s {name} {key}")
    svc_ports = [p["port"] for p in k8s_services.get(host, {}).get("spec", {}).get("ports", [])]
    check(port in svc_ports, f"k8s {name} {key}: Service {host} serves port {port}")
vd = by_kind.get("Deployment", {}).get("actor")
if vd:
    target = flags_of(vd["spec"]["template"]["spec"]["containers"][0]["args"]).get("actor.verifiers", "")
    host, port = host_port(target, "k8s actor.verifiers")
    vs = k8s_services.get(host, {}).get("spec", {})
    check(target.startswith("dns:///") and vs.get("clusterIP") == "None" and
          port in [p["port"] for p in vs.get("ports", [])],
          f"k8s actor.verifiers {target}: a headless Service (DNS lists every pod) with that port")
hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("actor")
if hpa:
    check(hpa["spec"]["scaleTargetRef"]["name"] in by_kind.get("Deployment", {}),
          "the HPA scales an existing Deployment")

print(f"{CHECKS[0]} checks, {len(FAILURES)} failed")
sys.exit(1 if FAILURES else 0)
