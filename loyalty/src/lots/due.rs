//! The scheduled steps' side of the lots: activations and expiries that are due at an instant.
