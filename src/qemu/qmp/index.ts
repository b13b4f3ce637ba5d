export {
  QmpClient,
  type QmpClientEventMap,
  type QmpClientState,
  type QmpCloseInfo,
  type QmpConnectOptions,
  type QmpExecuteOptions,
  type QmpListener,
  type QmpWaitOptions,
} from './qmp-client.js';
export { QmpEventStream, type QmpEventFilter, type QmpEventStreamOptions } from './event-stream.js';
export type { JsonObject, QmpEvent, QmpGreeting, QmpVersion } from './messages.js';
export { DEFAULT_MAX_LINE_BYTES, LineDecoder } from './line-decoder.js';
export { runJob, type QmpJobArgs, type QmpJobInfo, type RunJobOptions } from './jobs.js';
export { waitMigration, type MigrationInfo, type MigrationStatus, type WaitMigrationOptions } from './migration.js';
