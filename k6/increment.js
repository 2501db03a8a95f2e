// The hot path: many VUs incrementing counters of a pool of users created in setup().
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 k6/increment.js
//
// VUS (64), DURATION (30s), USERS (100): the load. RATE: if set, a constant arrival rate
// (requests/s, open model) instead of VUS looping as fast as they can. IDEMPOTENT=true
// sends an Idempotency-Key with each increment. P95_MS / P99_MS / MAX_ERROR_RATE override
// the thresholds; CLEANUP=false keeps the users; SUMMARY_JSON names the JSON summary.
import http from 'k6/http';
import { Counter } from 'k6/metrics';
import {
  API, TREND_STATS, checkStatus, createUsers, deleteUsers, envBool, envDuration, envInt,
  thresholds, params, pick, requireHealthy, runTag, summaryOutputs,
} from './lib.js';

const VUS = envInt('VUS', 64, 1, 100000);
const DURATION = envDuration('DURATION', '30s');
const USERS = envInt('USERS', 100, 1, 1000000);
const RATE = envInt('RATE', 0, 0);
const IDEMPOTENT = envBool('IDEMPOTENT', false);

// Increments the API acknowledged with 200: what MySQL must hold after the drain.
const acked = new Counter('increments_acked');

const scenario = RATE
  ? {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
    }
  : { executor: 'constant-vus', vus: VUS, duration: DURATION };

export const options = {
  scenarios: { increment: scenario },
  thresholds: thresholds('increment', ['increment'], 50, 100, 0.001),
  summaryTrendStats: TREND_STATS,
  setupTimeout: '5m',
  teardownTimeout: '5m',
};

export function setup() {
  requireHealthy();
  return { ids: createUsers(USERS, `${runTag()}-inc`) };
}

export default function (data) {
  const id = pick(data.ids);
  const headers = IDEMPOTENT ? { 'Idempotency-Key': `${__VU}-${__ITER}-${Date.now()}` } : {};
  const res = http.put(`${API}/users/${id}/increment`, null, params('increment', { headers }));
  if (checkStatus(res, 'increment', 200)) acked.add(1);
}

export function teardown(data) {
  deleteUsers(data.ids);
}

export function handleSummary(data) {
  return summaryOutputs('increment', data);
}
