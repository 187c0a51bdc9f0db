//! Hygiene: what the agent leaves behind. The process cannot be dumped, and once a secret is
//! rotated out or revoked, no copy of its value is left anywhere in the agent's memory — heap,
//! thread stacks, library buffers — nor in any file it wrote. Checked from outside, as root,
//! by reading the running process's memory through `/proc/<pid>/mem`.

mod memory;
