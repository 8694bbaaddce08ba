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
//! 4. [`train`]: all of it in a resumable run directory (`brisk senses train`);
//! 5. [`model`]: a finished run loaded for use, and [`context`]:
//!    WordCtx2Sense, a word's senses inside one context;
//! 6. [`eval`]: word similarity, pseudo-word disambiguation, the word
//!    intrusion quiz.

pub mod context;
pub mod cooc;
pub mod eval;
pub mod lda;
pub mod model;
pub mod pseudo;
pub mod train;
pub mod vectors;
