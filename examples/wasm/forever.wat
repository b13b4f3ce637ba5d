;; An export that never returns (a loop), and one that does: for the hang and crash steps of rollback.ts.
(module
  (func (export "forever") (loop $l br $l))
  (func (export "ok") (result i32) i32.const 7))
