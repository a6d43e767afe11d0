import { defineConfig } from 'vitest/config';

// Two cores: the native TF backend already uses both, so test files run two at a time, and the
// NATS end-to-end files (six processes each, timed kill points) run one at a time, after the rest.
const shared = { testTimeout: 120_000, hookTimeout: 120_000 };

export default defineConfig({
  test: {
    maxWorkers: 2,
    projects: [
      {
        test: {
          ...shared,
          name: 'suite',
          include: ['test/**/*.test.ts'],
          exclude: ['test/e2e/nats-*.test.ts', 'test/e2e/operator-*.test.ts'],
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          ...shared,
          name: 'nats-e2e',
          include: ['test/e2e/nats-*.test.ts'],
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
      {
        // A whole cluster each (etcd, API server, controllers, NATS, operator, a process per Pod).
        test: {
          testTimeout: 400_000,
          hookTimeout: 240_000,
          name: 'operator-e2e',
          include: ['test/e2e/operator-*.test.ts'],
          fileParallelism: false,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
