#!/usr/bin/env python3
"""Checks of the Helm chart charts/pdpool, one ctest test per subcommand (tests/CMakeLists.txt):

  lint             helm lint, with default values and with everything on (values-all.yaml)
  render           helm template: what each configuration renders, the controller Deployment
                   (image, flags pdpool-controller accepts, probes, security), RBAC, monitors,
                   the dashboard ConfigMap; combinations that cannot work fail the render
  rules            promtool check rules on the PrometheusRule's groups, and promtool test rules
                   (rules_test.yaml: the SLO, no-metrics and controller alerts fire when they
                   should and not otherwise)
  recording-rules  the recording rules are the planner's PromQL (controller/planner/
                   pool_queries.cc, printed by pdpool_chart_pool_query_texts)
  metric-names     every pdpool_* name in the dashboard and the rules is exported by the agent
                   or the controller: names and types read from the code that registers them
                   (prometheus::Build*), cross-checked against /metrics of the real binaries
                   (a worker and a router on loopback, a controller with no cluster)
  crds             charts/pdpool/crds/ equals crds/ (tests/chart/sync_crds.sh --check)
  values-doc       every value in values.yaml is in README.md's table, and nothing else is
  docs             docs/inferencepool.md is what docs/gen_crd_reference.py makes of the CRD, and
                   docs/metrics.md lists exactly the metrics the code registers, with their types

Needs helm (deploy/local/deps.sh installs it; tests/chart/helm.sh finds it), promtool (Debian's
prometheus package) and PyYAML (Debian's python3-yaml).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

try:
    import yaml
except ImportError:  # pragma: no cover - environment problem, said plainly
    sys.exit("chart_checks.py: PyYAML is missing: install Debian's python3-yaml "
             "(or run with /usr/bin/python3)")

CHART = "charts/pdpool"
RELEASE = "t"
RELEASE_NS = "pdpool-system"
# Contract names (TARGETS.md) that the dashboard shows before any binary exports them. Each must
# not be exported yet: once it is, remove it here so the check covers it like any other name.
PENDING_METRICS = {}
# apiVersions the chart may render: served by Kubernetes 1.20 and by current releases, plus the
# Prometheus Operator's.
ALLOWED_API_VERSIONS = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1",
                        "monitoring.coreos.com/v1"}

failures = []


def fail(message):
    failures.append(message)
    print("FAIL: " + message, file=sys.stderr)


def check(condition, message):
    if not condition:
        fail(message)
    return condition


class Env:
    def __init__(self, args):
        self.src = os.path.abspath(args.source_dir)
        self.build = os.path.abspath(args.build_dir) if args.build_dir else None
        self.helm_sh = os.path.join(self.src, "tests/chart/helm.sh")
        self.chart = os.path.join(self.src, CHART)
        self.values_all = os.path.join(self.src, "tests/chart/values-all.yaml")
        self.tmp = tempfile.mkdtemp(prefix="pdpool-chart-")

    def helm(self, *args, check_rc=True):
        r = subprocess.run([self.helm_sh, *args], cwd=self.src, capture_output=True, text=True)
        if check_rc and r.returncode != 0:
            raise SystemExit("helm %s failed (exit %d):\n%s%s" %
                             (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    def template(self, *args, release=RELEASE, namespace=RELEASE_NS):
        text = self.helm("template", release, self.chart, "--namespace", namespace, *args).stdout
        return text, [d for d in yaml.safe_load_all(text) if d]

    def binary(self, name):
        if not self.build:
            raise SystemExit("--build-dir is required for this check")
        path = os.path.join(self.build, name)
        if not os.access(path, os.X_OK):
            raise SystemExit("%s not built (build the target %s)" % (path, name))
        return path


def by_kind(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and
            (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name=None):
    found = by_kind(docs, kind, name)
    if len(found) != 1:
        raise SystemExit("expected one %s%s, rendered %d" %
                         (kind, " " + name if name else "", len(found)))
    return found[0]


# ---------------------------------------------------------------------------------------- lint

def cmd_lint(env):
    for extra in ([], ["-f", env.values_all],
                  ["--set", "serviceMonitor.enabled=true,podMonitor.enabled=true,"
                            "prometheusRule.enabled=true,grafanaDashboard.enabled=true"]):
        r = env.helm("lint", "--strict", env.chart, *extra, check_rc=False)
        check(r.returncode == 0, "helm lint --strict %s:\n%s%s" % (" ".join(extra), r.stdout,
                                                                   r.stderr))
        print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "")


# -------------------------------------------------------------------------------------- render

def controller_flags(env):
    """Long flags pdpool-controller accepts, from its --help."""
    r = subprocess.run([env.binary("pdpool-controller"), "--help"], capture_output=True,
                       text=True)
    flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", r.stdout + r.stderr))
    if "--leader-elect" not in flags:
        raise SystemExit("pdpool-controller --help lists no --leader-elect:\n" + r.stdout)
    return flags


def check_deployment(env, docs, flags, replicas, what):
    dep = one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    chart = yaml.safe_load(open(os.path.join(env.chart, "Chart.yaml")))
    check(dep["spec"]["replicas"] == replicas, "%s: replicas %s" % (what, dep["spec"]["replicas"]))
    check(c["image"] == "ghcr.io/pdpool/controller:" + chart["appVersion"],
          "%s: image %s" % (what, c["image"]))
    check(c["command"] == ["pdpool-controller"], "%s: command %s" % (what, c["command"]))
    for arg in c["args"]:
        name = arg.split("=", 1)[0]
        check(name in flags, "%s: argument %s: pdpool-controller has no flag %s" %
              (what, arg, name))
    args = dict(a.split("=", 1) for a in c["args"] if "=" in a)
    check(args.get("--leader-elect") == "true", "%s: leader election not on: %s" %
          (what, c["args"]))
    check(args.get("--metrics-port") == "8080", "%s: --metrics-port %s" %
          (what, args.get("--metrics-port")))
    check(spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"],
          "%s: serviceAccountName %s" % (what, spec["serviceAccountName"]))
    port = c["ports"][0]
    check(port["name"] == "metrics" and port["containerPort"] == 8080, "%s: port %s" %
          (what, port))
    check(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"},
          "%s: liveness probe %s" % (what, c["livenessProbe"]))
    check(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"},
          "%s: readiness probe %s" % (what, c["readinessProbe"]))
    sc = c["securityContext"]
    check(sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True and
          sc.get("allowPrivilegeEscalation") is False and
          sc.get("capabilities", {}).get("drop") == ["ALL"] and
          sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          "%s: container securityContext %s" % (what, sc))
    check(spec["securityContext"].get("runAsNonRoot") is True,
          "%s: pod securityContext %s" % (what, spec["securityContext"]))
    env_vars = {e["name"]: e for e in c.get("env", [])}
    check(env_vars.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {})
          .get("fieldPath") == "metadata.namespace", "%s: POD_NAMESPACE %s" % (what, env_vars))
    check(set(c["resources"]) >= {"requests", "limits"}, "%s: resources %s" %
          (what, c["resources"]))
    return args


def rules_of(role):
    return {(tuple(r.get("apiGroups", [])), tuple(r.get("resources", [])),
             tuple(r.get("resourceNames", [])), tuple(sorted(r.get("verbs", []))))
            for r in role["rules"]}


def cmd_render(env):
    flags = controller_flags(env)
    chart = yaml.safe_load(open(os.path.join(env.chart, "Chart.yaml")))
    check(chart["apiVersion"] == "v2", "Chart.yaml apiVersion %s" % chart["apiVersion"])
    check(chart.get("kubeVersion") == ">=1.20.0-0", "Chart.yaml kubeVersion %s" %
          chart.get("kubeVersion"))

    # Defaults: the controller and its RBAC, nothing of monitoring.
    _, docs = env.template()
    kinds = sorted(d["kind"] for d in docs)
    check(kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRole",
                           "ClusterRoleBinding", "ClusterRoleBinding", "Role", "RoleBinding",
                           "Service", "Deployment"]),
          "defaults render %s" % kinds)
    for d in docs:
        check(d["apiVersion"] in ALLOWED_API_VERSIONS, "%s %s: apiVersion %s" %
              (d["kind"], d["metadata"]["name"], d["apiVersion"]))
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            check(d["metadata"].get("namespace") == RELEASE_NS, "%s %s: namespace %s" %
                  (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")))
    args = check_deployment(env, docs, flags, 1, "defaults")
    check(args.get("--leader-election-namespace") == RELEASE_NS and
          args.get("--leader-election-id") == "pdpool-controller",
          "defaults: leader election flags %s" % args)
    check("--namespace" not in args, "defaults: --namespace set: %s" % args)
    svc = one(docs, "Service")
    check(svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics",
                                    "protocol": "TCP"}], "metrics Service ports %s" %
          svc["spec"]["ports"])
    dep = one(docs, "Deployment")
    check(svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] ==
          {k: v for k, v in dep["spec"]["template"]["metadata"]["labels"].items()
           if k in svc["spec"]["selector"]}, "Service selector does not select the pods")
    # RBAC: the binding of the main ClusterRole is cluster-wide; the Lease Role is by name.
    full = RELEASE + "-pdpool"
    main = one(docs, "ClusterRole", full)
    check(("pdpool.dev",) in {r[0] for r in rules_of(main)}, "main ClusterRole: no pdpool.dev")
    for rule in rules_of(main) | rules_of(one(docs, "ClusterRole", full + "-cluster")):
        check("*" not in rule[1] and "*" not in rule[3] and "*" not in rule[0],
              "wildcard in RBAC rule %s" % (rule,))
    check(one(docs, "ClusterRoleBinding", full)["roleRef"]["name"] == full,
          "ClusterRoleBinding %s" % full)
    lease = one(docs, "Role", full + "-leader-election")
    check(rules_of(lease) == {(("coordination.k8s.io",), ("leases",), (), ("create",)),
                              (("coordination.k8s.io",), ("leases",), ("pdpool-controller",),
                               ("get", "update"))}, "leader election Role %s" % lease["rules"])
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        check(binding["subjects"] == [{"kind": "ServiceAccount", "name": full,
                                       "namespace": RELEASE_NS}],
              "%s subjects %s" % (binding["metadata"]["name"], binding["subjects"]))

    # The CRD comes with --include-crds (Helm installs crds/ before the templates).
    _, with_crds = env.template("--include-crds")
    crd = one(with_crds, "CustomResourceDefinition")
    check(crd["metadata"]["name"] == "inferencepools.pdpool.dev", "CRD %s" %
          crd["metadata"]["name"])

    # Everything on.
    _, docs = env.template("-f", env.values_all)
    kinds = sorted({d["kind"] for d in docs})
    check(set(kinds) >= {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"},
          "values-all render %s" % kinds)
    for d in docs:
        check(d["apiVersion"] in ALLOWED_API_VERSIONS, "%s %s: apiVersion %s" %
              (d["kind"], d["metadata"]["name"], d["apiVersion"]))
    args = check_deployment(env, docs, flags, 2, "values-all")
    check(args.get("--namespace") == "serving", "values-all: --namespace %s" % args)
    check(args.get("--leader-election-namespace") == "pdpool-leases",
          "values-all: --leader-election-namespace %s" % args)
    check(one(docs, "Role")["metadata"]["namespace"] == "pdpool-leases",
          "values-all: leader election Role not in pdpool-leases")
    # watchNamespace: the main ClusterRole bound in that namespace only.
    check(not by_kind(docs, "ClusterRoleBinding", full), "values-all: main ClusterRoleBinding")
    rb = by_kind(docs, "RoleBinding", full)
    check(len(rb) == 1 and rb[0]["metadata"]["namespace"] == "serving" and
          rb[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": full}, "values-all: RoleBinding in serving %s" % rb)
    check(len(by_kind(docs, "ClusterRoleBinding", full + "-cluster")) == 1,
          "values-all: no cluster-wide binding for nodes and pods")
    routers = by_kind(docs, "RoleBinding", full + "-router")
    check(sorted(r["metadata"]["namespace"] for r in routers) == ["serving", "staging"] and
          all(r["subjects"] == [{"kind": "ServiceAccount", "name": "default",
                                 "namespace": r["metadata"]["namespace"]}] for r in routers),
          "values-all: router RoleBindings %s" % routers)
    sm = one(docs, "ServiceMonitor")
    check(sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"] and
          sm["spec"]["endpoints"][0]["port"] == "metrics" and
          sm["spec"]["endpoints"][0]["honorLabels"] is True,
          "ServiceMonitor %s" % sm["spec"])
    check(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack",
          "ServiceMonitor labels %s" % sm["metadata"]["labels"])
    pm = one(docs, "PodMonitor")
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    check(pm["spec"]["selector"] == {"matchExpressions": [{"key": "pdpool.dev/pool",
                                                           "operator": "Exists"}]},
          "PodMonitor selector %s" % pm["spec"]["selector"])
    check(endpoint["port"] == "http" and endpoint["path"] == "/metrics",
          "PodMonitor endpoint %s" % endpoint)
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    # The labels of deploy/local/prometheus-config.sh's targets (controller/prometheus_targets.cc).
    check(relabel == {"pool": ["__meta_kubernetes_pod_label_pdpool_dev_pool"],
                      "role": ["__meta_kubernetes_pod_label_pdpool_dev_role"],
                      "namespace": ["__meta_kubernetes_namespace"],
                      "pod": ["__meta_kubernetes_pod_name"]}, "PodMonitor relabelings %s" %
          relabel)
    cm = one(docs, "ConfigMap")
    check(cm["metadata"]["namespace"] == "monitoring" and
          cm["metadata"]["labels"].get("grafana_dashboard") == "1" and
          cm["metadata"].get("annotations") == {"grafana_folder": "pdpool"},
          "dashboard ConfigMap metadata %s" % cm["metadata"])
    with open(os.path.join(env.chart, "dashboards/pdpool.json")) as f:
        dashboard = json.load(f)
    check(json.loads(cm["data"]["pdpool.json"]) == dashboard,
          "dashboard ConfigMap data differs from dashboards/pdpool.json")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    check({"datasource", "namespace", "pool"} <= variables, "dashboard variables %s" %
          variables)

    # Another label for the dashboard sidecar.
    _, docs = env.template("--set", "grafanaDashboard.enabled=true,"
                           "grafanaDashboard.label=my_dashboards,grafanaDashboard.labelValue=yes")
    labels = one(docs, "ConfigMap")["metadata"]["labels"]
    check(labels.get("my_dashboards") == "yes" and "grafana_dashboard" not in labels,
          "dashboard label not configurable: %s" % labels)

    # Kubernetes versions: 1.20 renders, older is refused by kubeVersion.
    env.template("--kube-version", "1.20.2")
    r = env.helm("template", RELEASE, env.chart, "--kube-version", "1.19.16", check_rc=False)
    check(r.returncode != 0 and "kubeVersion" in r.stderr + r.stdout,
          "kubeVersion >=1.20.0-0 not enforced: exit %d %s" % (r.returncode, r.stderr))

    # Combinations that cannot work are refused with a message.
    for sets, message in [
            ("replicaCount=2,leaderElection.enabled=false", "needs leaderElection.enabled"),
            ("controller.workers=0", "controller.workers"),
            ("controller.logLevel=verbose", "controller.logLevel"),
            ("prometheusRule.enabled=true,prometheusRule.alerts.slo.percentile=95",
             "not one of prometheusRule.quantiles"),
            ("prometheusRule.quantiles={90,99.5}", "not an integer percentile"),
            ("serviceAccount.create=false", "serviceAccount.name is required")]:
        r = env.helm("template", RELEASE, env.chart, "--set", sets, check_rc=False)
        check(r.returncode != 0 and message in r.stderr,
              "--set %s: expected a failure saying %r, got exit %d: %s" %
              (sets, message, r.returncode, r.stderr.strip()))
    # An existing ServiceAccount instead of the chart's.
    _, docs = env.template("--set", "serviceAccount.create=false,serviceAccount.name=mine")
    check(not by_kind(docs, "ServiceAccount") and
          one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine" and
          all(b["subjects"][0]["name"] == "mine" for b in by_kind(docs, "ClusterRoleBinding")),
          "serviceAccount.create=false,name=mine")
    # rbac.create=false leaves RBAC to the user.
    _, docs = env.template("--set", "rbac.create=false,routerRbac.create=false")
    check(not [d for d in docs if d["kind"].endswith("Role") or d["kind"].endswith("Binding")],
          "rbac.create=false still renders RBAC")


# --------------------------------------------------------------------------------------- rules

def rule_groups(docs):
    return one(docs, "PrometheusRule")["spec"]


def write_rules(env, docs, name):
    path = os.path.join(env.tmp, name)
    with open(path, "w") as f:
        yaml.safe_dump(rule_groups(docs), f, sort_keys=False)
    return path


def promtool(*args):
    return subprocess.run(["promtool", *args], capture_output=True, text=True)


def cmd_rules(env):
    if not shutil.which("promtool"):
        raise SystemExit("promtool not found (Debian package prometheus; make deps)")
    configs = {
        "monitoring-defaults": ["--set", "prometheusRule.enabled=true,serviceMonitor.enabled=true,"
                                         "podMonitor.enabled=true"],
        "rules-only": ["--set", "prometheusRule.enabled=true"],
        "values-all": ["-f", env.values_all],
    }
    for name, args in configs.items():
        _, docs = env.template(*args)
        path = write_rules(env, docs, name + ".rules.yaml")
        r = promtool("check", "rules", path)
        check(r.returncode == 0, "promtool check rules (%s):\n%s%s" % (name, r.stdout, r.stderr))
        print("promtool check rules (%s): %s" % (name, r.stdout.strip().splitlines()[-1]))
    # Alerts that need a monitor are left out without it.
    _, docs = env.template(*configs["rules-only"])
    alerts = {r.get("alert") for g in rule_groups(docs)["groups"] for r in g["rules"]}
    check(alerts == {None, "PdpoolTTFTOverSLO", "PdpoolTPOTOverSLO", "PdpoolPoolMetricsAbsent"},
          "rules without monitors: %s" % sorted(a for a in alerts if a))

    # The alerts' logic on synthetic series (rules_test.yaml), on values-all's rules evaluated
    # at the test's own interval.
    _, docs = env.template("-f", env.values_all, "--set", "prometheusRule.interval=")
    write_rules(env, docs, "rules.yaml")
    shutil.copy(os.path.join(env.src, "tests/chart/rules_test.yaml"), env.tmp)
    r = promtool("test", "rules", os.path.join(env.tmp, "rules_test.yaml"))
    check(r.returncode == 0, "promtool test rules tests/chart/rules_test.yaml:\n%s%s" %
          (r.stdout, r.stderr))
    print("promtool test rules: %s" % (r.stdout.strip().splitlines() or [""])[-1])


# ----------------------------------------------------------------------------- recording rules

def cmd_recording_rules(env):
    printer = env.binary("pdpool_chart_pool_query_texts")
    values = yaml.safe_load(open(os.path.join(env.chart, "values.yaml")))
    window = values["prometheusRule"]["window"]
    expected = {}
    for q in values["prometheusRule"]["quantiles"]:
        r = subprocess.run([printer, "--window", window, "--quantile", str(q / 100)],
                           capture_output=True, text=True, check=True)
        for line in r.stdout.splitlines():
            query = json.loads(line)
            field = query["field"]
            if query["role"]:
                key = ("pdpool:pool_role:" + field, query["role"])
            elif field in ("ttft_seconds", "tpot_seconds"):
                key = ("pdpool:pool:%s_p%d" % (field, q), "")
            else:
                key = ("pdpool:pool:" + field, "")
            expected[key] = query["expr"]
    _, docs = env.template("--set", "prometheusRule.enabled=true")
    group = [g for g in rule_groups(docs)["groups"] if g["name"] == "pdpool.pool.rules"]
    if not check(len(group) == 1, "no rule group pdpool.pool.rules"):
        return
    actual = {}
    for rule in group[0]["rules"]:
        key = (rule["record"], rule.get("labels", {}).get("role", ""))
        check(key not in actual, "recording rule %s recorded twice" % (key,))
        actual[key] = rule["expr"]
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            fail("the planner queries %s (%s) but the chart records no %s%s" %
                 (key[0].split(":")[-1], expected[key], key[0],
                  " {role=%s}" % key[1] if key[1] else ""))
        elif key not in expected:
            fail("the chart records %s %s, which is not one of the planner's queries" % key)
        elif actual[key] != expected[key]:
            fail("%s%s differs from the planner's query:\n  chart:   %s\n  planner: %s" %
                 (key[0], " {role=%s}" % key[1] if key[1] else "", actual[key], expected[key]))
    print("%d recording rules match the planner's queries" % len(actual))


# -------------------------------------------------------------------------------- metric names

def registered_metrics(src):
    """{name: type} of every pdpool_* metric the C++ code registers with prometheus-cpp:
    Build<Type>().Name("...") directly, or through a local lambda returning Build<Type>()."""
    found = {}
    for top in ("agent", "controller", "common"):
        for dirpath, _, files in os.walk(os.path.join(src, top)):
            for f in files:
                if not f.endswith(".cc"):
                    continue
                text = open(os.path.join(dirpath, f)).read()
                if "prometheus::Build" not in text:
                    continue
                for kind, name in re.findall(
                        r'prometheus::Build(Counter|Gauge|Histogram|Summary)\(\)\s*\.Name\(\s*'
                        r'"(pdpool_\w+)"', text):
                    found[name] = kind.lower()
                lambdas = dict(re.findall(
                    r'auto\s+(\w+)\s*=\s*\[[^\]]*\]\s*\([^)]*\)\s*\{\s*return\s*&?\s*'
                    r'prometheus::Build(Counter|Gauge|Histogram|Summary)\(\)', text))
                for fn, kind in lambdas.items():
                    for name in re.findall(r'\b%s\(\s*"(pdpool_\w+)"' % re.escape(fn), text):
                        found[name] = kind.lower()
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, deadline_s=60):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def exposed_metrics(env):
    """{name: type} from the # TYPE lines of a real worker, router and controller."""
    agent = env.binary("pdpool-agent")
    controller = env.binary("pdpool-controller")
    token = os.path.join(env.tmp, "token")
    with open(token, "w") as f:
        f.write("chart-checks\n")
    # A controller with no cluster still serves /metrics (its informers retry in the background).
    kubeconfig = os.path.join(env.tmp, "kubeconfig")
    with open(kubeconfig, "w") as f:
        f.write("apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n"
                "    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n"
                "users:\n- name: none\n  user: {token: none}\ncontexts:\n- name: none\n"
                "  context: {cluster: none, user: none}\ncurrent-context: none\n")
    worker_port, router_port, controller_port = free_port(), free_port(), free_port()
    commands = {
        "worker": [agent, "worker", "--role", "prefill", "--backend", "cpu", "--model",
                   "test-tiny", "--weights", "dummy:1", "--host", "127.0.0.1", "--port",
                   str(worker_port), "--auth-token-file", token],
        "router": [agent, "router", "--host", "127.0.0.1", "--port", str(router_port),
                   "--auth-token-file", token, "--served-model-name", "tiny",
                   "--workers", "127.0.0.1:%d" % worker_port],
        "controller": [controller, "--kubeconfig", kubeconfig, "--leader-elect=false",
                       "--metrics-bind-address", "127.0.0.1", "--metrics-port",
                       str(controller_port)],
    }
    ports = {"worker": worker_port, "router": router_port, "controller": controller_port}
    procs = {}
    types = {}
    try:
        for name, cmd in commands.items():
            log = open(os.path.join(env.tmp, name + ".log"), "w")
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        for name, port in ports.items():
            try:
                text = scrape(port)
            except OSError as e:
                raise SystemExit("cannot scrape the %s's /metrics (%s); its log:\n%s" %
                                 (name, e, open(os.path.join(env.tmp, name + ".log")).read()))
            for metric, kind in re.findall(r"^# TYPE (pdpool_\w+) (\w+)$", text, re.M):
                types[metric] = kind
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return types


def series_names(metrics):
    names = set()
    for name, kind in metrics.items():
        if kind in ("histogram", "summary"):
            names |= {name + "_bucket", name + "_sum", name + "_count"} if kind == "histogram" \
                else {name, name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def cmd_metric_names(env):
    registered = registered_metrics(env.src)
    exposed = exposed_metrics(env)
    # The source reading is trusted only as far as the binaries confirm it.
    for name, kind in exposed.items():
        check(registered.get(name) == kind,
              "%s is exposed as a %s but the source scan found %s: fix registered_metrics()" %
              (name, kind, registered.get(name)))
    check(len(exposed) >= 20, "only %d metrics scraped" % len(exposed))
    known = series_names(registered)
    for name in PENDING_METRICS:
        check(name not in known, "%s is exported now: remove it from PENDING_METRICS in %s" %
              (name, __file__))

    _, docs = env.template("-f", env.values_all)
    rules = rule_groups(docs)["groups"]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    uses = []  # (where, expr)
    for g in rules:
        for r in g["rules"]:
            uses.append(("rule %s" % (r.get("record") or r.get("alert")), r["expr"]))
    with open(os.path.join(env.chart, "dashboards/pdpool.json")) as f:
        dashboard = json.load(f)

    def walk(node, title):
        if isinstance(node, dict):
            title = node.get("title", title)
            for k, v in node.items():
                if k in ("expr", "definition") and isinstance(v, str):
                    uses.append(("dashboard panel %r" % title, v))
                elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                    uses.append(("dashboard variable %r" % node.get("name"), v["query"]))
                else:
                    walk(v, title)
        elif isinstance(node, list):
            for v in node:
                walk(v, title)
    walk(dashboard, "")

    checked = set()
    for where, expr in uses:
        for name in re.findall(r"(?<![\w:])(pdpool_\w+)", expr):
            checked.add(name)
            if name in PENDING_METRICS:
                print("note: %s uses %s, not exported yet (%s)" %
                      (where, name, PENDING_METRICS[name]))
                continue
            check(name in known, "%s uses %s, which no pdpool binary exports (%s)" %
                  (where, name, expr))
        for name in re.findall(r"(?<![\w:])(pdpool:[\w:]+)", expr):
            checked.add(name)
            check(name in recorded, "%s uses %s, which no recording rule records" %
                  (where, name))
    print("%d metric names used by the dashboard and the rules, all exported or recorded; "
          "%d metric families registered in the code, %d of them seen on the binaries' /metrics"
          % (len(checked), len(registered), len(exposed)))


# ------------------------------------------------------------------------------- crds, values

def cmd_crds(env):
    r = subprocess.run([os.path.join(env.src, "tests/chart/sync_crds.sh"), "--check"],
                       capture_output=True, text=True)
    check(r.returncode == 0, r.stdout + r.stderr)
    print(r.stdout.strip())


def leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaf_paths(v, prefix + "." + k if prefix else k)
    else:
        yield prefix


def commented_keys(text):
    """Paths of the keys in values.yaml preceded by a `# --` comment (helm-docs' convention)."""
    stack = []  # (indent, key)
    comment = False
    keys = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = comment or stripped.startswith("# --")
            continue
        m = re.match(r"^(\s*)([A-Za-z]\w*):", line)
        if not m:
            comment = False
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if comment:
            keys.append(".".join(k for _, k in stack))
        comment = False
    return keys


def cmd_values_doc(env):
    text = open(os.path.join(env.chart, "values.yaml")).read()
    values = yaml.safe_load(text)
    readme = open(os.path.join(env.chart, "README.md")).read()
    documented = set(re.findall(r"^\|\s*`([A-Za-z][\w.]*)`\s*\|", readme, re.M))
    commented = set(commented_keys(text))
    # Every value is commented: each leaf is, or sits under, a key with a `# --` comment.
    for leaf in sorted(leaf_paths(values)):
        check(any(leaf == k or leaf.startswith(k + ".") for k in commented),
              "values.yaml: %s has no `# --` comment (on it or a parent)" % leaf)
    for p in sorted(commented - documented):
        fail("value %s is not in charts/pdpool/README.md's table" % p)
    for p in sorted(documented - commented):
        fail("charts/pdpool/README.md documents %s, which values.yaml does not have (with a "
             "`# --` comment)" % p)
    # Each documented default is the value's default.
    for p in sorted(commented & documented):
        row = re.search(r"^\|\s*`%s`\s*\|\s*(.*?)\s*\|" % re.escape(p), readme, re.M).group(1)
        v = values
        for k in p.split("."):
            v = v[k]
        want = "`" + json.dumps(v, separators=(", ", ": ")) + "`"
        check(row == want, "README default of %s is %s, values.yaml has %s" % (p, row, want))
    print("%d values documented" % len(commented))


def cmd_docs(env):
    gen = os.path.join(env.src, "docs/gen_crd_reference.py")
    r = subprocess.run([sys.executable, gen], capture_output=True, text=True)
    check(r.returncode == 0, "docs/gen_crd_reference.py failed: " + r.stderr)
    have = open(os.path.join(env.src, "docs/inferencepool.md")).read()
    check(r.stdout == have, "docs/inferencepool.md is out of date with crds/: run "
          "python3 docs/gen_crd_reference.py > docs/inferencepool.md")
    registered = registered_metrics(env.src)
    text = open(os.path.join(env.src, "docs/metrics.md")).read()
    rows = dict(re.findall(r"^\|\s*`(pdpool_\w+)`\s*\|\s*(\w+)\s*\|", text, re.M))
    for name, kind in sorted(registered.items()):
        check(name in rows, "docs/metrics.md does not list %s (%s)" % (name, kind))
        check(name not in rows or rows[name] == kind,
              "docs/metrics.md says %s is a %s; the code registers a %s" %
              (name, rows.get(name), kind))
    for name in sorted(set(rows) - set(registered)):
        fail("docs/metrics.md lists %s, which nothing registers" % name)
    print("checked %d documented metrics and the CRD reference" % len(rows))


COMMANDS = {
    "lint": cmd_lint,
    "render": cmd_render,
    "rules": cmd_rules,
    "recording-rules": cmd_recording_rules,
    "metric-names": cmd_metric_names,
    "crds": cmd_crds,
    "values-doc": cmd_values_doc,
    "docs": cmd_docs,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--source-dir", default=os.path.join(os.path.dirname(__file__), "../.."))
    parser.add_argument("--build-dir", help="where pdpool-controller, pdpool-agent and "
                        "pdpool_chart_pool_query_texts are")
    args = parser.parse_args()
    env = Env(args)
    try:
        COMMANDS[args.command](env)
    finally:
        if not failures:
            shutil.rmtree(env.tmp, ignore_errors=True)
        else:
            print("files kept in " + env.tmp, file=sys.stderr)
    if failures:
        print("%d check(s) failed" % len(failures), file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
