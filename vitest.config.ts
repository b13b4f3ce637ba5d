import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // Integration files each boot QEMU guests; on 2 cores two files at a time is the sweet spot.
    maxWorkers: 2,
    minWorkers: 1,
    testTimeout: 60_000,
    // Standby machines start in the background after restores and would change the QEMU counts that many files
    // check; test/integration/standby-machines.test.ts turns them on and tests them.
    env: { EVOLVM_QEMU_STANDBY: 'off' },
    hookTimeout: 120_000,
    typecheck: {
      enabled: false,
      include: ['test/types/**/*.test-d.ts'],
      tsconfig: './tsconfig.json',
    },
  },
});
