// Tests for controller/conditions (metav1.Condition semantics over JSON) and the RFC 3339
// helpers of common/clock that condition timestamps are written with.
#include "controller/conditions.h"

#include <gtest/gtest.h>

#include <string>

#include "common/clock.h"

namespace pdpool::controller {
namespace {

using std::chrono::seconds;

const WallTime kT0 = WallTime(seconds(1'700'000'000));  // 2023-11-14T22:13:20Z

TEST(SetCondition, NewConditionGetsAllFieldsAndTransitionTimeNow) {
  Json conditions;  // null, as in a status that never had conditions
  EXPECT_TRUE(SetCondition(&conditions, "Ready", "False", "Placing", "waiting for GPUs", 3, kT0));
  ASSERT_TRUE(conditions.is_array());
  ASSERT_EQ(conditions.size(), 1u);
  EXPECT_EQ(conditions[0], (Json{{"type", "Ready"},
                                 {"status", "False"},
                                 {"reason", "Placing"},
                                 {"message", "waiting for GPUs"},
                                 {"observedGeneration", 3},
                                 {"lastTransitionTime", "2023-11-14T22:13:20Z"}}));
}

TEST(SetCondition, TransitionTimeMovesOnlyWhenStatusFlips) {
  Json conditions = Json::array();
  ASSERT_TRUE(SetCondition(&conditions, "Ready", "False", "Placing", "a", 1, kT0));

  // Same status, new reason/message/generation: updated, transition time kept.
  EXPECT_TRUE(SetCondition(&conditions, "Ready", "False", "Scaling", "b", 2, kT0 + seconds(30)));
  const Json* ready = FindCondition(conditions, "Ready");
  ASSERT_NE(ready, nullptr);
  EXPECT_EQ((*ready)["reason"], "Scaling");
  EXPECT_EQ((*ready)["message"], "b");
  EXPECT_EQ((*ready)["observedGeneration"], 2);
  EXPECT_EQ((*ready)["lastTransitionTime"], "2023-11-14T22:13:20Z");

  // Flip: transition time moves.
  EXPECT_TRUE(SetCondition(&conditions, "Ready", "True", "Serving", "ok", 2, kT0 + seconds(60)));
  ready = FindCondition(conditions, "Ready");
  EXPECT_EQ((*ready)["status"], "True");
  EXPECT_EQ((*ready)["lastTransitionTime"], "2023-11-14T22:14:20Z");
}

TEST(SetCondition, IdenticalSetReportsNoChange) {
  Json conditions = Json::array();
  ASSERT_TRUE(SetCondition(&conditions, "Ready", "True", "Serving", "ok", 4, kT0));
  const Json before = conditions;
  EXPECT_FALSE(SetCondition(&conditions, "Ready", "True", "Serving", "ok", 4, kT0 + seconds(99)));
  EXPECT_EQ(conditions, before);
}

TEST(SetCondition, ConditionsAreSortedByTypeWhateverTheOrderSet) {
  Json a = Json::array();
  Json b = Json::array();
  (void)SetCondition(&a, "Ready", "True", "R", "", 1, kT0);
  (void)SetCondition(&a, "Degraded", "False", "D", "", 1, kT0);
  (void)SetCondition(&a, "Progressing", "False", "P", "", 1, kT0);
  (void)SetCondition(&b, "Progressing", "False", "P", "", 1, kT0);
  (void)SetCondition(&b, "Ready", "True", "R", "", 1, kT0);
  (void)SetCondition(&b, "Degraded", "False", "D", "", 1, kT0);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[0]["type"], "Degraded");
  EXPECT_EQ(a[1]["type"], "Progressing");
  EXPECT_EQ(a[2]["type"], "Ready");
}

TEST(SetCondition, UnsortedExistingArrayIsNormalizedOnce) {
  Json conditions = Json::array({{{"type", "Ready"},
                                  {"status", "True"},
                                  {"reason", "R"},
                                  {"message", ""},
                                  {"observedGeneration", 1},
                                  {"lastTransitionTime", "2023-11-14T22:13:20Z"}},
                                 {{"type", "Degraded"},
                                  {"status", "False"},
                                  {"reason", "D"},
                                  {"message", ""},
                                  {"observedGeneration", 1},
                                  {"lastTransitionTime", "2023-11-14T22:13:20Z"}},
                                 "garbage"});
  EXPECT_TRUE(SetCondition(&conditions, "Ready", "True", "R", "", 1, kT0));
  ASSERT_EQ(conditions.size(), 2u);
  EXPECT_EQ(conditions[0]["type"], "Degraded");
  EXPECT_FALSE(SetCondition(&conditions, "Ready", "True", "R", "", 1, kT0));
}

TEST(SetCondition, InvalidStatusIsStoredAsUnknown) {
  Json conditions = Json::array();
  (void)SetCondition(&conditions, "Ready", "yes", "R", "", 1, kT0);
  EXPECT_EQ(conditions[0]["status"], "Unknown");
  EXPECT_FALSE(IsConditionTrue(conditions, "Ready"));
}

TEST(SetCondition, MissingTransitionTimeIsFilledIn) {
  Json conditions = Json::array({{{"type", "Ready"}, {"status", "True"}}});
  EXPECT_TRUE(SetCondition(&conditions, "Ready", "True", "R", "", 1, kT0));
  EXPECT_EQ(conditions[0]["lastTransitionTime"], "2023-11-14T22:13:20Z");
}

TEST(SetCondition, LongMessagesAreCutToTheApiLimit) {
  Json conditions = Json::array();
  (void)SetCondition(&conditions, "Ready", "False", "R", std::string(40000, 'x'), 1, kT0);
  EXPECT_EQ(conditions[0]["message"].get<std::string>().size(), kMaxConditionMessageBytes);
}

TEST(SetCondition, NullArgumentsChangeNothing) {
  EXPECT_FALSE(SetCondition(nullptr, "Ready", "True", "R", "", 1, kT0));
  Json conditions = Json::array();
  EXPECT_FALSE(SetCondition(&conditions, "", "True", "R", "", 1, kT0));
  EXPECT_TRUE(conditions.empty());
}

TEST(FindCondition, FindsByTypeAndToleratesNonArrays) {
  Json conditions = Json::array();
  (void)SetCondition(&conditions, "Ready", "True", "R", "", 1, kT0);
  (void)SetCondition(&conditions, "Degraded", "False", "D", "", 1, kT0);
  EXPECT_TRUE(IsConditionTrue(conditions, "Ready"));
  EXPECT_FALSE(IsConditionTrue(conditions, "Degraded"));
  EXPECT_FALSE(IsConditionTrue(conditions, "Missing"));
  EXPECT_EQ(FindCondition(conditions, "Missing"), nullptr);
  EXPECT_EQ(FindCondition(Json("nope"), "Ready"), nullptr);
  EXPECT_FALSE(IsConditionTrue(Json(), "Ready"));
}

TEST(RemoveCondition, RemovesOnlyThatType) {
  Json conditions = Json::array();
  (void)SetCondition(&conditions, "Ready", "True", "R", "", 1, kT0);
  (void)SetCondition(&conditions, "Degraded", "False", "D", "", 1, kT0);
  EXPECT_TRUE(RemoveCondition(&conditions, "Degraded"));
  EXPECT_FALSE(RemoveCondition(&conditions, "Degraded"));
  ASSERT_EQ(conditions.size(), 1u);
  EXPECT_EQ(conditions[0]["type"], "Ready");
}

TEST(Rfc3339, Format) {
  EXPECT_EQ(FormatRfc3339(kT0), "2023-11-14T22:13:20Z");
  EXPECT_EQ(FormatRfc3339(kT0 + std::chrono::milliseconds(999)), "2023-11-14T22:13:20Z");
  EXPECT_EQ(FormatRfc3339Micro(kT0 + std::chrono::nanoseconds(123456789)),
            "2023-11-14T22:13:20.123456Z");
  EXPECT_EQ(FormatRfc3339Micro(kT0), "2023-11-14T22:13:20.000000Z");
  EXPECT_EQ(FormatRfc3339(WallTime(seconds(0))), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatRfc3339(WallTime(seconds(-1))), "1969-12-31T23:59:59Z");
  EXPECT_EQ(FormatRfc3339(WallTime(seconds(951782400))), "2000-02-29T00:00:00Z");
}

TEST(Rfc3339, ParseRoundTripsAndHonoursOffsets) {
  WallTime t;
  ASSERT_TRUE(ParseRfc3339("2023-11-14T22:13:20Z", &t));
  EXPECT_EQ(t, kT0);
  ASSERT_TRUE(ParseRfc3339("2023-11-14T22:13:20.123456Z", &t));
  EXPECT_EQ(t, kT0 + std::chrono::microseconds(123456));
  ASSERT_TRUE(ParseRfc3339("2023-11-15T00:13:20+02:00", &t));
  EXPECT_EQ(t, kT0);
  ASSERT_TRUE(ParseRfc3339("2023-11-14T17:13:20.5-05:00", &t));
  EXPECT_EQ(t, kT0 + std::chrono::milliseconds(500));
  const WallTime odd = kT0 + std::chrono::microseconds(7);
  ASSERT_TRUE(ParseRfc3339(FormatRfc3339Micro(odd), &t));
  EXPECT_EQ(t, odd);
}

TEST(Rfc3339, ParseRejectsMalformedInput) {
  WallTime t;
  for (const char* bad :
       {"", "2023-11-14", "2023-11-14T22:13:20", "2023-13-01T00:00:00Z", "2023-02-30T00:00:00Z",
        "2023-11-14T24:00:00Z", "2023-11-14T22:13:20.Z", "2023-11-14T22:13:20Zjunk",
        "2023-11-14 22:13:20Z", "20231114T221320Z", "2023-11-14T22:13:20+0200"}) {
    EXPECT_FALSE(ParseRfc3339(bad, &t)) << bad;
  }
}

TEST(RealClock, InstanceIsOneObjectAndTicks) {
  RealClock& a = RealClock::Instance();
  EXPECT_EQ(&a, &RealClock::Instance());
  const TimePoint t1 = a.Now();
  EXPECT_LE(t1, a.Now());
  EXPECT_GT(a.WallNow(), kT0);
}

}  // namespace
}  // namespace pdpool::controller
