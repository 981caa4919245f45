// The peer of bench/run.sh: graphile-worker (version pinned in package.json) on the same
// PostgreSQL, with one no-op task, "noop".
//
//   node worker.js migrate      install graphile-worker's schema in DATABASE_URL
//   node worker.js run          work jobs until SIGTERM/SIGINT (graphile-worker's own graceful stop)
//
// Settings are graphile-worker's published "optimal conditions" configuration
// (https://worker.graphile.org/docs/performance): concurrentJobs 24, maxPoolSize 25, local queue of
// 500 jobs, batched completion and failure (completeJobBatchDelay / failJobBatchDelay 0). Each can
// be overridden from the environment: GW_CONCURRENCY, GW_POOL_SIZE, GW_LOCAL_QUEUE (-1: off),
// GW_COMPLETE_DELAY and GW_FAIL_DELAY (-1: off).
//
// Measurement hooks, all optional:
//   BENCH_START_FILE     append "<job id> <wall clock µs>" as each job starts (latency runs)
//   BENCH_EVENTS         with BENCH_PROGRESS_FILE: write the wall clock (µs) at which the job
//   BENCH_PROGRESS_FILE  numbered 10% and 90% of BENCH_EVENTS started (steady-state rate)
//   BENCH_READY_FILE     the wall clock (µs) once the runner has started
"use strict";

const fs = require("fs");
const { performance } = require("perf_hooks");
const { run, runMigrations, Logger } = require("graphile-worker");

const connectionString = process.env.DATABASE_URL;
if (!connectionString) {
  console.error("worker.js: DATABASE_URL is not set");
  process.exit(1);
}

function intEnv(name, fallback) {
  const v = process.env[name];
  return v === undefined || v === "" ? fallback : parseInt(v, 10);
}

// Wall clock with sub-millisecond resolution (Date.now() has only milliseconds).
function wallUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

// Warnings and errors only: graphile-worker logs every job at info level otherwise.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    console.error(`[graphile-worker ${level}] ${message}`);
  }
});

const localQueueSize = intEnv("GW_LOCAL_QUEUE", 500);
const preset = {
  worker: {
    connectionString,
    concurrentJobs: intEnv("GW_CONCURRENCY", 24),
    maxPoolSize: intEnv("GW_POOL_SIZE", 25),
    localQueue: { size: localQueueSize },
    completeJobBatchDelay: intEnv("GW_COMPLETE_DELAY", 0),
    failJobBatchDelay: intEnv("GW_FAIL_DELAY", 0),
    logger,
  },
};

async function main() {
  const mode = process.argv[2] || "run";
  if (mode === "migrate") {
    await runMigrations({ preset, logger });
    return;
  }
  if (mode !== "run") {
    console.error("usage: node worker.js migrate|run");
    process.exit(64);
  }

  const startFile = process.env.BENCH_START_FILE;
  const startFd = startFile ? fs.openSync(startFile, "a") : null;
  const progressFile = process.env.BENCH_PROGRESS_FILE;
  const expected = intEnv("BENCH_EVENTS", 0);
  const mark10 = Math.ceil(expected * 0.1);
  const mark90 = Math.ceil(expected * 0.9);
  let started = 0;

  const taskList = {
    noop: async (_payload, helpers) => {
      if (startFd !== null) {
        fs.writeSync(startFd, `${helpers.job.id} ${wallUs()}\n`);
      }
      if (progressFile) {
        started += 1;
        if (started === mark10 || started === mark90) {
          fs.appendFileSync(progressFile, `${started} ${wallUs()}\n`);
        }
      }
    },
  };

  const runner = await run({ preset, logger, taskList });
  if (process.env.BENCH_READY_FILE) {
    fs.writeFileSync(process.env.BENCH_READY_FILE, `${wallUs()}\n`);
  }
  await runner.promise;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
