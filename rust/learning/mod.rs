//! Learning: the M-step's sums over regions that numpy formed as batches of small products.

pub mod kronecker;
