//! The token embedding: rows of a `[vocab, hidden]` table, looked up with
//! `dma_candle::gather_rows`, whose backward runs in parallel on CUDA (candle's `Embedding`
//! backward walks every token in one thread per column).

use candle_core::{Result, Tensor};

#[derive(Debug, Clone)]
pub(crate) struct Embedding {
    table: Tensor,
}

impl Embedding {
    pub(crate) fn new(table: Tensor) -> Self {
        Embedding { table }
    }

    /// `[..., hidden]` rows of `ids` `[...]` (u32, checked against the vocabulary by the caller).
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.table.dim(1)?);
        dma_candle::gather_rows(&self.table, &ids.flatten_all()?)?.reshape(dims)
    }
}
