// Run by standby-machines.test.ts in a Node process of its own: a program that awaits only standbysSettled must
// not end before the standby it waits for is up (the quiet timer alone does not hold the event loop).
import { closeStandbyMachines, standbysSettled } from '../../src/index.js';
import { readyStandbyPids, refillStandbys, takeStandby } from '../../src/qemu/standby-machines.js';

const runDir = process.argv[2]!;
process.env.EVOLVM_QEMU_STANDBY = 'on';
await takeStandby({ runDir }); // none yet: notes the shape as wanted, as a restore does
refillStandbys();
await standbysSettled();
console.log(`settled with ${readyStandbyPids().length} standby`);
await closeStandbyMachines();
