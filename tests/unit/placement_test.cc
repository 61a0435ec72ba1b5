// Tests for controller/placement: NVLink-domain capacity, per-node fit, the domain choice and
// the worker node affinity. Pure values; no fakes needed.
#include "controller/placement.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pdpool::controller {
namespace {

constexpr char kKey[] = "nvidia.com/gpu.clique";

Json Node(const std::string& name, const std::string& domain, int gpus, bool ready = true) {
  Json node = {
      {"apiVersion", "v1"},
      {"kind", "Node"},
      {"metadata", {{"name", name}, {"labels", Json::object()}}},
      {"spec", Json::object()},
      {"status",
       {{"allocatable", {{"cpu", "72"}, {"nvidia.com/gpu", std::to_string(gpus)}}},
        {"conditions", Json::array({{{"type", "MemoryPressure"}, {"status", "False"}},
                                    {{"type", "Ready"}, {"status", ready ? "True" : "False"}}})}}}};
  if (!domain.empty()) node["metadata"]["labels"][kKey] = domain;
  return node;
}

Json Pod(const std::string& name, const std::string& node, int gpus,
         const std::string& ns = "other", const std::string& phase = "Running") {
  return {{"metadata", {{"name", name}, {"namespace", ns}, {"labels", Json::object()}}},
          {"spec",
           {{"nodeName", node},
            {"containers",
             Json::array({{{"name", "main"},
                           {"resources",
                            {{"requests", {{"nvidia.com/gpu", std::to_string(gpus)}}},
                             {"limits", {{"nvidia.com/gpu", std::to_string(gpus)}}}}}}})}}},
          {"status", {{"phase", phase}}}};
}

// `count` nodes named <domain>-NN with `gpus` GPUs each.
void AddDomain(std::vector<Json>* nodes, const std::string& domain, int count, int gpus = 4) {
  for (int i = 0; i < count; ++i) {
    nodes->push_back(Node(domain + "-" + std::to_string(100 + i).substr(1), domain, gpus));
  }
}

std::string NodeName(const std::string& domain, int i) {
  return domain + "-" + std::to_string(100 + i).substr(1);
}

// Uses `gpus` GPUs on each of nodes [first, last) of a domain, by pods of another namespace.
void UseGpus(std::vector<Json>* pods, const std::string& domain, int first, int last, int gpus) {
  for (int i = first; i < last; ++i) {
    pods->push_back(Pod("busy-" + NodeName(domain, i), NodeName(domain, i), gpus));
  }
}

PlacementRequest Request(int prefill, int decode, int gpus_per_replica = 4) {
  PlacementRequest r;
  r.topology_key = kKey;
  r.prefill_replicas = prefill;
  r.prefill_gpus_per_replica = gpus_per_replica;
  r.decode_replicas = decode;
  r.decode_gpus_per_replica = gpus_per_replica;
  r.pool_namespace = "serving";
  r.pool_name = "llama";
  return r;
}

const DomainCapacity* FindDomain(const PlacementResult& r, const std::string& name) {
  for (const DomainCapacity& d : r.domains) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

class TwoRacks : public ::testing::Test {
 protected:
  void SetUp() override {
    AddDomain(&nodes_, "nvl72-a", 18);
    AddDomain(&nodes_, "nvl72-b", 18);
  }
  std::vector<Json> nodes_;
  std::vector<Json> pods_;
};

TEST_F(TwoRacks, ReportsCapacityPerDomain) {
  UseGpus(&pods_, "nvl72-b", 0, 10, 4);
  const PlacementResult r = ChoosePlacement(nodes_, pods_, Request(2, 4));
  ASSERT_EQ(r.domains.size(), 2u);
  EXPECT_EQ(r.domains[0].name, "nvl72-a");
  EXPECT_EQ(r.domains[0].nodes.size(), 18u);
  EXPECT_EQ(r.domains[0].allocatable_gpus, 72);
  EXPECT_EQ(r.domains[0].free_gpus, 72);
  EXPECT_EQ(r.domains[1].free_gpus, 32);
  EXPECT_EQ(r.gpus_needed, 24);
  EXPECT_EQ(r.replicas_needed, 6);
}

TEST_F(TwoRacks, ChoosesTheFittingDomainWithFewestFreeGpus) {
  UseGpus(&pods_, "nvl72-b", 0, 10, 4);  // b: 32 free, a: 72 free
  const PlacementResult r = ChoosePlacement(nodes_, pods_, Request(2, 4));
  EXPECT_TRUE(r.fits);
  EXPECT_EQ(r.domain, "nvl72-b");
  EXPECT_EQ(r.reason, "Placed");
  EXPECT_NE(r.message.find("nvl72-b"), std::string::npos) << r.message;
}

TEST_F(TwoRacks, TiesAreBrokenByName) {
  const PlacementResult r = ChoosePlacement(nodes_, pods_, Request(2, 4));
  EXPECT_EQ(r.domain, "nvl72-a");
}

TEST_F(TwoRacks, KeepsTheCurrentDomainWhileItFits) {
  UseGpus(&pods_, "nvl72-b", 0, 10, 4);  // b would be the best fit
  PlacementRequest req = Request(2, 4);
  req.current_domain = "nvl72-a";
  const PlacementResult r = ChoosePlacement(nodes_, pods_, req);
  EXPECT_TRUE(r.fits);
  EXPECT_EQ(r.domain, "nvl72-a");
}

TEST_F(TwoRacks, LeavesTheCurrentDomainWhenItNoLongerFits) {
  UseGpus(&pods_, "nvl72-a", 0, 14, 4);  // a: 16 free
  PlacementRequest req = Request(2, 4);
  req.current_domain = "nvl72-a";
  const PlacementResult r = ChoosePlacement(nodes_, pods_, req);
  EXPECT_TRUE(r.fits);
  EXPECT_EQ(r.domain, "nvl72-b");
}

TEST_F(TwoRacks, ThePoolsOwnPodsCountAsAvailable) {
  // The pool already runs 6 replicas in a, filling it but for 8 GPUs; another namespace's pod
  // with the same pool label is not ours.
  for (int i = 0; i < 6; ++i) {
    Json pod = Pod("llama-w" + std::to_string(i), NodeName("nvl72-a", i), 4, "serving");
    pod["metadata"]["labels"]["pdpool.dev/pool"] = "llama";
    pods_.push_back(pod);
  }
  Json stranger = Pod("llama-elsewhere", NodeName("nvl72-a", 6), 4, "staging");
  stranger["metadata"]["labels"]["pdpool.dev/pool"] = "llama";
  pods_.push_back(stranger);
  UseGpus(&pods_, "nvl72-a", 7, 16, 4);
  UseGpus(&pods_, "nvl72-b", 0, 18, 4);  // b full
  PlacementRequest req = Request(2, 4);
  req.current_domain = "nvl72-a";
  const PlacementResult r = ChoosePlacement(nodes_, pods_, req);
  const DomainCapacity* a = FindDomain(r, "nvl72-a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->free_gpus, 24 + 8);
  EXPECT_TRUE(r.fits);
  EXPECT_EQ(r.domain, "nvl72-a");
}

TEST_F(TwoRacks, FinishedAndUnboundPodsHoldNoGpus) {
  for (int i = 0; i < 18; ++i) {
    pods_.push_back(Pod("done-" + std::to_string(i), NodeName("nvl72-a", i), 4, "batch",
                        i % 2 == 0 ? "Succeeded" : "Failed"));
  }
  Json pending = Pod("pending", "", 4);
  pending["spec"].erase("nodeName");
  pods_.push_back(pending);
  const PlacementResult r = ChoosePlacement(nodes_, pods_, Request(2, 4));
  EXPECT_EQ(FindDomain(r, "nvl72-a")->free_gpus, 72);
}

TEST_F(TwoRacks, PerNodeFitThreeFreeOnEachNodeDoesNotHoldAFourGpuReplica) {
  // a: 10 nodes full, 8 nodes with 3 free = 24 free, enough in total but no node holds 4.
  UseGpus(&pods_, "nvl72-a", 0, 10, 4);
  UseGpus(&pods_, "nvl72-a", 10, 18, 1);
  // b: 20 free on 5 whole nodes: whole replicas fit, but too few GPUs.
  UseGpus(&pods_, "nvl72-b", 0, 13, 4);
  const PlacementResult r = ChoosePlacement(nodes_, pods_, Request(2, 4));
  EXPECT_FALSE(r.fits);
  EXPECT_EQ(r.domain, "");
  EXPECT_EQ(r.reason, "InsufficientGpus");
  const DomainCapacity* a = FindDomain(r, "nvl72-a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->free_gpus, 24);
  EXPECT_EQ(a->max_free_on_node, 3);
  EXPECT_EQ(a->replicas_fit, 0);
  EXPECT_EQ(FindDomain(r, "nvl72-b")->replicas_fit, 5);
  EXPECT_NE(r.message.find("needs 24 GPUs (6 replicas × 4)"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("largest domain nvl72-a has 24 free on 18 nodes"), std::string::npos)
      << r.message;
  EXPECT_NE(r.message.find("at most 3 on one node"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("0 of 6 replicas fit"), std::string::npos) << r.message;
}

TEST_F(TwoRacks, NothingFitsMessageNamesTheLargestDomain) {
  UseGpus(&pods_, "nvl72-a", 0, 13, 4);  // a: 20 free
  UseGpus(&pods_, "nvl72-b", 0, 15, 4);  // b: 12 free
  const PlacementResult r = ChoosePlacement(nodes_, pods_, Request(2, 4));
  EXPECT_FALSE(r.fits);
  EXPECT_EQ(r.domain, "");
  EXPECT_NE(r.message.find("needs 24 GPUs (6 replicas × 4)"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("largest domain nvl72-a has 20 free on 18 nodes"), std::string::npos)
      << r.message;
}

TEST_F(TwoRacks, PreferredWithNothingFittingStillPrefersADomain) {
  UseGpus(&pods_, "nvl72-a", 0, 15, 4);  // a: 12 free
  UseGpus(&pods_, "nvl72-b", 0, 13, 4);  // b: 20 free
  PlacementRequest req = Request(2, 4);
  req.policy = TopologyPolicy::kPreferred;
  PlacementResult r = ChoosePlacement(nodes_, pods_, req);
  EXPECT_FALSE(r.fits);
  EXPECT_EQ(r.domain, "nvl72-b");  // most free
  req.current_domain = "nvl72-a";
  r = ChoosePlacement(nodes_, pods_, req);
  EXPECT_EQ(r.domain, "nvl72-a");  // stays put
}

TEST_F(TwoRacks, PolicyNoneNeedsNoDomainButReportsCapacity) {
  UseGpus(&pods_, "nvl72-a", 0, 18, 4);
  UseGpus(&pods_, "nvl72-b", 0, 18, 4);
  PlacementRequest req = Request(2, 4);
  req.policy = TopologyPolicy::kNone;
  const PlacementResult r = ChoosePlacement(nodes_, pods_, req);
  EXPECT_TRUE(r.fits);
  EXPECT_EQ(r.domain, "");
  EXPECT_EQ(r.reason, "NotPinned");
  ASSERT_EQ(r.domains.size(), 2u);
  EXPECT_EQ(r.domains[0].free_gpus, 0);
  EXPECT_FALSE(r.domains[0].fits);
}

TEST(Placement, NotReadyCordonedAndTaintedNodesAreExcluded) {
  std::vector<Json> nodes;
  AddDomain(&nodes, "nvl72-a", 18);
  nodes[0] = Node(NodeName("nvl72-a", 0), "nvl72-a", 4, /*ready=*/false);
  nodes[1]["status"]["conditions"] = Json::array();  // no Ready condition at all
  nodes[2]["spec"]["unschedulable"] = true;
  nodes[3]["spec"]["taints"] =
      Json::array({{{"key", "node.kubernetes.io/unreachable"}, {"effect", "NoExecute"}}});
  nodes[4]["spec"]["taints"] =
      Json::array({{{"key", "maintenance"}, {"value", "true"}, {"effect", "NoSchedule"}}});
  nodes[5]["spec"]["taints"] =
      Json::array({{{"key", "soft"}, {"value", "x"}, {"effect", "PreferNoSchedule"}}});
  PlacementRequest req = Request(2, 4);
  PlacementResult r = ChoosePlacement(nodes, {}, req);
  ASSERT_EQ(r.domains.size(), 1u);
  EXPECT_EQ(r.domains[0].nodes.size(), 13u);
  EXPECT_EQ(r.domains[0].excluded_nodes, 5);
  EXPECT_EQ(r.domains[0].free_gpus, 52);
  for (const NodeCapacity& n : r.domains[0].nodes) {
    EXPECT_NE(n.name, NodeName("nvl72-a", 0));
    EXPECT_NE(n.name, NodeName("nvl72-a", 4));
  }

  // The workers' tolerations make a tainted node usable again.
  req.tolerations = Json::array({{{"key", "maintenance"},
                                  {"operator", "Equal"},
                                  {"value", "true"},
                                  {"effect", "NoSchedule"}}});
  r = ChoosePlacement(nodes, {}, req);
  EXPECT_EQ(r.domains[0].nodes.size(), 14u);
  req.tolerations = Json::array({{{"operator", "Exists"}}});  // tolerates everything
  r = ChoosePlacement(nodes, {}, req);
  EXPECT_EQ(r.domains[0].nodes.size(), 15u);
}

TEST(Placement, ExcludedNodesCanMakeADomainTooSmall) {
  std::vector<Json> nodes;
  AddDomain(&nodes, "nvl72-a", 6);
  nodes[0]["spec"]["unschedulable"] = true;
  const PlacementResult r = ChoosePlacement(nodes, {}, Request(2, 4));
  EXPECT_FALSE(r.fits);
  EXPECT_NE(r.message.find("largest domain nvl72-a has 20 free on 5 nodes"), std::string::npos)
      << r.message;
  EXPECT_NE(r.message.find("1 more excluded"), std::string::npos) << r.message;
}

TEST(Placement, BinPacksLargestReplicasFirst) {
  // Nodes of 8 GPUs: one empty, two half used. 1 × 8 + 2 × 4 fits only if the 8-GPU replica
  // takes the empty node before a 4-GPU one does.
  std::vector<Json> nodes = {Node("n1", "d", 8), Node("n2", "d", 8), Node("n3", "d", 8)};
  std::vector<Json> pods = {Pod("p2", "n2", 4), Pod("p3", "n3", 4)};
  PlacementRequest req = Request(2, 1);
  req.prefill_gpus_per_replica = 4;
  req.decode_gpus_per_replica = 8;
  const PlacementResult r = ChoosePlacement(nodes, pods, req);
  EXPECT_TRUE(r.fits) << r.message;
  EXPECT_EQ(r.gpus_needed, 16);
  EXPECT_NE(r.message.find("needs 16 GPUs (2 prefill × 4 + 1 decode × 8)"), std::string::npos)
      << r.message;
}

TEST(Placement, NoLabelledNodes) {
  std::vector<Json> nodes = {Node("n1", "", 4), Node("n2", "", 4)};
  const PlacementResult r = ChoosePlacement(nodes, {}, Request(1, 1));
  EXPECT_FALSE(r.fits);
  EXPECT_EQ(r.reason, "NoTopologyDomains");
  EXPECT_EQ(r.unlabelled_nodes, 2);
  EXPECT_NE(r.message.find(kKey), std::string::npos) << r.message;
}

TEST(Placement, CustomTopologyKey) {
  std::vector<Json> nodes = {Node("n1", "", 4)};
  nodes[0]["metadata"]["labels"]["example.com/rack"] = "r1";
  PlacementRequest req = Request(1, 0);
  req.topology_key = "example.com/rack";
  const PlacementResult r = ChoosePlacement(nodes, {}, req);
  EXPECT_TRUE(r.fits);
  EXPECT_EQ(r.domain, "r1");
}

TEST(Placement, MalformedObjectsAreSkipped) {
  std::vector<Json> nodes = {Json(), Json::array(), Json{{"metadata", 5}}, Node("n1", "d", 4)};
  nodes[3]["status"]["allocatable"]["nvidia.com/gpu"] = "four";  // unparseable: no GPUs
  std::vector<Json> pods = {Json("x"), Json{{"spec", {{"nodeName", 7}}}}};
  const PlacementResult r = ChoosePlacement(nodes, pods, Request(1, 1));
  EXPECT_FALSE(r.fits);
  ASSERT_EQ(r.domains.size(), 1u);
  EXPECT_EQ(r.domains[0].nodes.size(), 0u);
}

TEST(Placement, MakePlacementRequestFromSpec) {
  PoolSpec spec;
  spec.prefill.replicas = 2;
  spec.prefill.gpus_per_replica = 4;
  spec.decode.replicas = 3;
  spec.decode.gpus_per_replica = 2;
  spec.topology.policy = "Preferred";
  const PlacementRequest r = MakePlacementRequest(spec, "serving", "llama", "nvl72-a");
  EXPECT_EQ(r.TotalGpus(), spec.TotalGpus());
  EXPECT_EQ(r.policy, TopologyPolicy::kPreferred);
  EXPECT_EQ(r.topology_key, kKey);
  EXPECT_EQ(r.current_domain, "nvl72-a");
}

TEST(Placement, AnAutoscaledPoolGoesWhereItHasRoomToGrow) {
  std::vector<Json> nodes;
  AddDomain(&nodes, "hgx-b", 4);     // 16 GPUs
  AddDomain(&nodes, "nvl72-a", 18);  // 72 GPUs
  PlacementRequest fixed = Request(1, 1);
  EXPECT_EQ(ChoosePlacement(nodes, {}, fixed).domain, "hgx-b");  // best fit for 8 GPUs

  PlacementRequest autoscaled = Request(1, 1);
  autoscaled.growth_gpus = 48;
  const PlacementResult r = ChoosePlacement(nodes, {}, autoscaled);
  EXPECT_TRUE(r.fits);
  EXPECT_EQ(r.domain, "nvl72-a");
  EXPECT_NE(r.message.find("room to grow to 48 GPUs"), std::string::npos) << r.message;

  // Room for the growth in both: the best fit again.
  autoscaled.growth_gpus = 16;
  EXPECT_EQ(ChoosePlacement(nodes, {}, autoscaled).domain, "hgx-b");
}

TEST(Placement, WithNoRoomToGrowAnywhereTheLargestFittingDomainWins) {
  std::vector<Json> nodes;
  std::vector<Json> pods;
  AddDomain(&nodes, "nvl72-a", 18);
  AddDomain(&nodes, "nvl72-b", 18);
  UseGpus(&pods, "nvl72-a", 0, 10, 4);  // a: 32 free, b: 72 free
  PlacementRequest req = Request(1, 1);
  req.growth_gpus = 200;
  EXPECT_EQ(ChoosePlacement(nodes, pods, req).domain, "nvl72-b");
  // A pool already placed stays while it fits, whatever its growth.
  req.current_domain = "nvl72-a";
  EXPECT_EQ(ChoosePlacement(nodes, pods, req).domain, "nvl72-a");
}

TEST(Placement, GrowthComesFromTheBoundsAndTheBudget) {
  PoolSpec spec;
  spec.prefill.gpus_per_replica = 4;
  spec.prefill.max_replicas = 8;
  spec.decode.gpus_per_replica = 2;
  spec.decode.max_replicas = 10;
  EXPECT_EQ(MakePlacementRequest(spec, "serving", "llama", "").growth_gpus, 0);  // fixed size
  spec.autoscaling.enabled = true;
  EXPECT_EQ(MakePlacementRequest(spec, "serving", "llama", "").growth_gpus, 52);
  spec.autoscaling.gpu_budget = 40;
  EXPECT_EQ(MakePlacementRequest(spec, "serving", "llama", "").growth_gpus, 40);
}

TEST(PodGpuRequest, CountsContainersLimitsAndInitContainers) {
  Json pod = {
      {"spec",
       {{"containers", Json::array({{{"resources", {{"limits", {{"nvidia.com/gpu", 2}}}}}},
                                    {{"resources", {{"requests", {{"nvidia.com/gpu", "1"}}}}}},
                                    {{"name", "no-resources"}}})},
        {"initContainers",
         Json::array({{{"resources", {{"limits", {{"nvidia.com/gpu", "2"}}}}}}})}}}};
  EXPECT_EQ(PodGpuRequest(pod), 3);
  pod["spec"]["initContainers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "8";
  EXPECT_EQ(PodGpuRequest(pod), 8);
  EXPECT_EQ(PodGpuRequest(Json()), 0);
}

TEST(ParseQuantityMilli, Forms) {
  int64_t m = 0;
  EXPECT_TRUE(ParseQuantityMilli(Json("4"), &m));
  EXPECT_EQ(m, 4000);
  EXPECT_TRUE(ParseQuantityMilli(Json(4), &m));
  EXPECT_EQ(m, 4000);
  EXPECT_TRUE(ParseQuantityMilli(Json("500m"), &m));
  EXPECT_EQ(m, 500);
  EXPECT_TRUE(ParseQuantityMilli(Json("1.5k"), &m));
  EXPECT_EQ(m, 1500000);
  EXPECT_TRUE(ParseQuantityMilli(Json("1Ki"), &m));
  EXPECT_EQ(m, 1024000);
  EXPECT_FALSE(ParseQuantityMilli(Json("four"), &m));
  EXPECT_FALSE(ParseQuantityMilli(Json("4x"), &m));
  EXPECT_FALSE(ParseQuantityMilli(Json(), &m));
}

TEST(WorkerAffinity, PerPolicy) {
  const Json required = WorkerAffinity(kKey, "nvl72-a", TopologyPolicy::kRequired);
  const Json term = required["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                            ["nodeSelectorTerms"][0]["matchExpressions"][0];
  EXPECT_EQ(term, (Json{{"key", kKey}, {"operator", "In"}, {"values", {"nvl72-a"}}}));
  EXPECT_FALSE(
      required["nodeAffinity"].contains("preferredDuringSchedulingIgnoredDuringExecution"));

  const Json preferred = WorkerAffinity(kKey, "nvl72-a", TopologyPolicy::kPreferred);
  const Json& pref =
      preferred["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
  EXPECT_EQ(pref["weight"], 100);
  EXPECT_EQ(pref["preference"]["matchExpressions"][0], term);
  EXPECT_FALSE(
      preferred["nodeAffinity"].contains("requiredDuringSchedulingIgnoredDuringExecution"));

  EXPECT_TRUE(WorkerAffinity(kKey, "nvl72-a", TopologyPolicy::kNone).is_null());
  EXPECT_TRUE(WorkerAffinity(kKey, "", TopologyPolicy::kRequired).is_null());
}

TEST(TopologyPolicy, Names) {
  EXPECT_EQ(TopologyPolicyFromString("Required"), TopologyPolicy::kRequired);
  EXPECT_EQ(TopologyPolicyFromString("Preferred"), TopologyPolicy::kPreferred);
  EXPECT_EQ(TopologyPolicyFromString("None"), TopologyPolicy::kNone);
  EXPECT_EQ(TopologyPolicyFromString("bogus"), TopologyPolicy::kRequired);
  EXPECT_EQ(TopologyPolicyName(TopologyPolicy::kPreferred), "Preferred");
}

}  // namespace
}  // namespace pdpool::controller
