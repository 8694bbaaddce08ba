//! Word2Sense: sparse, interpretable sense embeddings learned from raw text
//! (Panigrahi, Simhadri and Bhattacharyya, "Word2Sense: Sparse Interpretable
//! Word Embeddings", ACL 2019).
//!
//! Every vocabulary word is a document whose tokens are the words seen
//! around it; LDA over those documents gives each word a distribution over
//! K topics, the senses, each a distribution over context words. The
//! pipeline:
//! 1. [`cooc`]: the word–context count matrix (window 5, subsampling);
//! 2. [`lda`]: LDA over its rows with a WarpLDA-style O(1) sampler;
//! 3. [`vectors`]: point estimates, raw vectors, sense merging, final vectors;
//! 4. [`train`]: all of it in a resumable run directory (`brisk senses train`).

pub mod cooc;
pub mod lda;
pub mod train;
pub mod vectors;
