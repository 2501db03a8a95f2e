// The ceiling: GET /healthz touches no storage, so its rate is what the server stack
// (uvicorn, Starlette, the request middleware) can answer on this machine. The bench runs
// it next to increment.js with the same VUs and duration.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 k6/healthz.js
//
// VUS (64), DURATION (30s).
import http from 'k6/http';
import {
  BASE_URL, TREND_STATS, checkStatus, envDuration, envInt, params, summaryOutputs, thresholds,
} from './lib.js';

const VUS = envInt('VUS', 64, 1, 100000);
const DURATION = envDuration('DURATION', '30s');

export const options = {
  scenarios: { healthz: { executor: 'constant-vus', vus: VUS, duration: DURATION } },
  thresholds: thresholds('healthz', ['healthz'], 50, 100, 0.001),
  summaryTrendStats: TREND_STATS,
};

export default function () {
  checkStatus(http.get(`${BASE_URL}/healthz`, params('healthz')), 'healthz', 200);
}

export function handleSummary(data) {
  return summaryOutputs('healthz', data);
}
