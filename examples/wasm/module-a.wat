;; Module A: compute(x, y) = x + y, and a call counter kept in a global.
(module
  (global $calls (mut i32) (i32.const 0))
  (func (export "compute") (param i32 i32) (result i32)
    global.get $calls i32.const 1 i32.add global.set $calls
    local.get 0 local.get 1 i32.add)
  (func (export "calls") (result i32) global.get $calls))
