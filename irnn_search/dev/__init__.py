"""Development tooling: what tests, benchmarks and CI need, kept out of the runtime path (an
import-linter contract keeps every runtime package from importing it)."""
