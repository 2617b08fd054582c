// k6 script of `make bench-latency` (run by bench/latency.py, which sets every variable below).
//
// constant-vus: VUS virtual users, each a closed loop on its own keep-alive connection, for DURATION.
// SCENARIO=uniform: GET /recommend?user=u<n>&k=10, n uniform over USERS users (the id is USER_PREFIX, "u" by
// default, then USER_FIRST + n, USER_FIRST 0 by default: bench/index.py serves MovieLens' users 1…943).
// SCENARIO=mixed: n drawn with Zipf weights 1/(n+1)^ZIPF_S (user n is the n-th most active, as in the project's
// events); GET /recommend for that user, then with probability FEEDBACK_AFTER_GET a POST /feedback of the answer's
// first item followed by that user's next GET /recommend, which must no longer list the item (it counts as seen):
// counted as reflected or not. FEEDBACK_AFTER_GET = s / (1 - 2s) makes POSTs the share s of all requests.
// GET and POST latencies go to their own trends; any status but 200 counts as an error.
// The summary (handleSummary) goes to SUMMARY as JSON; nothing is printed.
import http from "k6/http";
import { Counter, Trend } from "k6/metrics";

const BASE = __ENV.BASE_URL;
const USERS = parseInt(__ENV.USERS, 10);
const SCENARIO = __ENV.SCENARIO || "uniform";
const ZIPF_S = parseFloat(__ENV.ZIPF_S || "1.0");
const FEEDBACK_AFTER_GET = parseFloat(__ENV.FEEDBACK_AFTER_GET || "0");
const USER_PREFIX = __ENV.USER_PREFIX === undefined ? "u" : __ENV.USER_PREFIX;
const USER_FIRST = parseInt(__ENV.USER_FIRST || "0", 10);

export const options = {
  scenarios: {
    load: {
      executor: "constant-vus",
      vus: parseInt(__ENV.VUS, 10),
      duration: __ENV.DURATION,
      gracefulStop: "10s",
    },
  },
  summaryTrendStats: ["min", "med", "avg", "p(50)", "p(90)", "p(99)", "max", "count"],
  discardResponseBodies: false,
  noCookiesReset: true,
};

const getMs = new Trend("get_ms", true);
const postMs = new Trend("post_ms", true);
const errors = new Counter("errors");
const reflected = new Counter("feedback_reflected");
const notReflected = new Counter("feedback_not_reflected");

// Cumulative Zipf weights over the users, built once per VU (binary search per draw).
let cumulative = null;
if (SCENARIO === "mixed") {
  cumulative = new Float64Array(USERS);
  let total = 0;
  for (let n = 0; n < USERS; n++) {
    total += 1 / Math.pow(n + 1, ZIPF_S);
    cumulative[n] = total;
  }
}

function zipfUser() {
  const target = Math.random() * cumulative[USERS - 1];
  let low = 0;
  let high = USERS - 1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (cumulative[middle] < target) low = middle + 1;
    else high = middle;
  }
  return low;
}

function recommend(user) {
  // One `name` tag for every user's URL: k6 otherwise keeps a series of its built-in metrics per URL (100,000 in
  // the mixed scenario, past its own warning limit), memory and CPU taken from the server it measures.
  const response = http.get(`${BASE}/recommend?user=${USER_PREFIX}${USER_FIRST + user}&k=10`, {
    tags: { name: "GET /recommend" },
  });
  getMs.add(response.timings.duration);
  if (response.status !== 200) {
    errors.add(1, { method: "GET", status: String(response.status) });
    return null;
  }
  return response.json("items");
}

export default function () {
  if (SCENARIO !== "mixed") {
    recommend(Math.floor(Math.random() * USERS));
    return;
  }
  const user = zipfUser();
  const items = recommend(user);
  if (items === null || items.length === 0 || Math.random() >= FEEDBACK_AFTER_GET) return;
  const item = items[0].item_id;
  const posted = http.post(`${BASE}/feedback`, JSON.stringify([{ user_id: `${USER_PREFIX}${USER_FIRST + user}`, item_id: item }]), {
    headers: { "Content-Type": "application/json" },
    tags: { name: "POST /feedback" },
  });
  postMs.add(posted.timings.duration);
  if (posted.status !== 200) {
    errors.add(1, { method: "POST", status: String(posted.status) });
    return;
  }
  const after = recommend(user);
  if (after === null) return;
  if (after.some((entry) => entry.item_id === item)) notReflected.add(1);
  else reflected.add(1);
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
