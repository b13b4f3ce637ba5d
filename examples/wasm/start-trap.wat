;; A module whose start function traps: its load fails, and evolve rolls the sandbox back.
(module
  (func $start unreachable)
  (start $start))
