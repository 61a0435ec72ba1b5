// The internal HTTP protocol between a pool's router and its workers (and between workers),
// shared by both sides so paths and field names live in one place. Every endpoint here requires
// `Authorization: Bearer <pool token>` (--auth-token-file); without it: 401 and no effect.
// JSON bodies; errors are {"error": "<message>"} with a 4xx/5xx status.
//
// Disaggregated request (router drives it):
//   1. POST kReservePath to a decode worker
//        {"request_id": "cmpl-1", "prompt_tokens": 37, "max_tokens": 16}
//      → 200 {"reservation_id": 7, "blocks": [3, 4, 9], "block_size": 16,
//             "kv_address": "127.0.0.1:40123", "expires_ms": 30000,
//             "transports": {"tcp": {},
//                            "cuda-ipc": {"ipc_handle": "<128 hex digits>",
//                                         "device_uuid": "GPU-…", "block_bytes": 2097152,
//                                         "num_blocks": 4096},
//                            "nccl": {"device_uuid": "GPU-…", "node": "gb200-n07",
//                                     "nvlink_domain": "<clique>", "block_bytes": 2097152,
//                                     "num_blocks": 4096}}}
//        "transports" lists what the decode worker can receive over: always tcp; cuda-ipc and
//        nccl when its KV cache is in GPU memory (cuda backend, a build with CUDA). ipc_handle
//        is the cudaIpcMemHandle_t of its KV region; node and nvlink_domain come from
//        $PDPOOL_NODE_NAME and $PDPOOL_NVLINK_DOMAIN ("" when unknown). kv_address is also the
//        control channel of cuda-ipc and nccl (agent/transport/*_kv_transport.h).
//      → 503 {"error": ...} when it has no free KV blocks or is draining (router tries another).
//   2. POST kPrefillPath to a prefill worker
//        {"request_id": "cmpl-1", "prompt_token_ids": [...],
//         "sampling": {"temperature": 0.7, "top_p": 0.9, "seed": 1},
//         "destination": {"kv_address": "127.0.0.1:40123", "reservation_id": 7,
//                         "blocks": [3, 4, 9], "transports": {...the reserve reply's...}}}
//      The router passes the reservation through unchanged. The prefill worker picks the
//      transport (agent/transport/kv_transport_select.h) from its pool's setting
//      (--kv-transport; "transport": "auto"|"tcp"|"cuda-ipc"|"nccl" in the destination
//      overrides it) and both KV caches, computes the prompt's KV, samples the first token,
//      pushes the KV into the destination blocks through the transport, then answers
//      → 200 {"first_token": 1234, "prompt_tokens": 37, "kv_bytes": 4096,
//             "kv_transport": "nccl", "kv_transfer_seconds": 0.0012}
//        kv_bytes: bytes moved (GPU transports copy whole blocks; sim: the modeled bytes).
//      → 500 before any compute when the pool's transport is cuda-ipc or nccl and this pair
//        cannot use it (another GPU for cuda-ipc, the same GPU or another NVLink domain for
//        nccl): the error names both GPUs or domains. No silent fallback to tcp; with auto,
//        or a KV cache in host memory (cpu, sim), there is always a transport.
//      → 5xx on failure (the decode side frees the reservation when a transfer breaks; the
//        router releases it too, reserves again and retries on another prefill worker).
//   3. POST kDecodePath to the same decode worker
//        {"reservation_id": 7, "first_token": 1234, "max_tokens": 16,
//         "prompt_token_ids": [...], "sampling": {...}, "ignore_eos": false}
//      (prompt_token_ids is optional: with it the decode worker can recompute the sequence if
//      it must preempt it for lack of KV blocks; without it such a sequence fails.)
//      → 200, chunked NDJSON, one line per generated token after the first:
//        {"token": 42}\n ... then a last line {"finish_reason": "length"|"stop"}\n
//        or {"error": "..."}\n if the sequence fails. Closing the connection cancels it.
//   POST kReleasePath {"reservation_id": 7} → 200 (idempotent; frees unclaimed blocks).
// Aggregated request (role both):
//   POST kGeneratePath {"request_id", "prompt_token_ids", "max_tokens", "sampling",
//                       "ignore_eos"} → the same NDJSON stream, first token included.
// Status (router's worker selection, the planner, operators):
//   GET kInfoPath → {"role": "decode", "backend": "cpu", "model": "test-tiny",
//                    "ready": true, "draining": false, "block_size": 16, "kv_blocks_total": 512,
//                    "kv_blocks_free": 500, "kv_usage_ratio": 0.02, "running": 1, "waiting": 0,
//                    "outstanding_prefill_tokens": 0, "max_model_len": 2048,
//                    "kv_address": "127.0.0.1:40123"}
//     plus "role_switching_to": null | "prefill" | "decode" (a role switch is draining),
//     "role_switches": 0 (switches since start), "weights_loaded_at": "<RFC 3339>" (when the
//     engine got its weights: a role switch leaves it unchanged), "pid": 1234,
//     "kv_transport": "auto" (the pool's setting), "kv_transports": {...} (as in reserve).
// Role switch in place (the planner moves a ready worker between prefill and decode; the
// controller relabels the pod and calls this, or the worker sees the label change in its
// --labels-file). Weights, engine and KV cache stay; only the role changes:
//   POST kRolePath {"role": "prefill"|"decode"}
//     → 200 {"role": "prefill", "previous_role": "decode", "changed": true,
//            "drained_requests": 3, "drain_complete": true, "switch_seconds": 0.42}
//       once the switch is done (synchronous: the call lasts as long as the drain, at most the
//       worker's --drain-timeout; drained_requests: the old role's calls and KV reservations in
//       flight when the switch began). Already in that role: 200 at once, "changed": false.
//       While switching, new work of the old role gets 503 (the router retries it elsewhere),
//       in-flight work finishes (prefills push their KV, decodes stream to the end, KV
//       reservations are claimed or expire); after --drain-timeout the role switches anyway
//       (drain_complete false) and reservations still held stay claimable.
//     → 400 unknown or missing role, role "both", or a `both` worker (no role to switch);
//     → 409 another switch to the other role is in progress (a call for the same role as
//       the one in progress waits for it and gets its result);
//     → 503 the worker is shutting down.
//   After a switch, calls that need the old role get 503 (not 400), since routers learn the
//   new role from kInfoPath only at their next poll.
//   GET /healthz, /readyz, /metrics (no token needed: probes and Prometheus). /readyz stays
//   200 during a role switch.
#pragma once

namespace pdpool::agent::protocol {

inline constexpr const char* kReservePath = "/internal/v1/reserve";
inline constexpr const char* kReleasePath = "/internal/v1/release";
inline constexpr const char* kPrefillPath = "/internal/v1/prefill";
inline constexpr const char* kDecodePath = "/internal/v1/decode";
inline constexpr const char* kGeneratePath = "/internal/v1/generate";
inline constexpr const char* kInfoPath = "/internal/v1/info";
inline constexpr const char* kRolePath = "/internal/v1/role";

// Field names of the role switch (kRolePath body and reply, kInfoPath).
inline constexpr const char* kRoleField = "role";
inline constexpr const char* kPreviousRoleField = "previous_role";
inline constexpr const char* kRoleChangedField = "changed";
inline constexpr const char* kDrainedRequestsField = "drained_requests";
inline constexpr const char* kDrainCompleteField = "drain_complete";
inline constexpr const char* kSwitchSecondsField = "switch_seconds";
inline constexpr const char* kRoleSwitchingToField = "role_switching_to";
inline constexpr const char* kRoleSwitchesField = "role_switches";
inline constexpr const char* kWeightsLoadedAtField = "weights_loaded_at";
inline constexpr const char* kPidField = "pid";

}  // namespace pdpool::agent::protocol
