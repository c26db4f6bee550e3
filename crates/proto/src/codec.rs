//! The prost codec every generated service and client uses, with small
//! per-RPC buffers.
//!
//! tonic's default codec starts each RPC with an 8 KiB encode and an 8 KiB
//! decode buffer and keeps them for the life of the stream. A control plane
//! holds two long-lived streams per agent whose messages are tens of bytes, so
//! those buffers were most of its memory per agent. Here they start at
//! [`INITIAL_BUFFER`] bytes and grow only when a message needs more; the
//! yield threshold (when a streaming encoder hands a batch to HTTP/2) keeps
//! tonic's default.

use std::marker::PhantomData;

use bytes::Buf;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial capacity of each RPC's encode and decode buffers.
pub const INITIAL_BUFFER: usize = 512;
/// tonic's default: a streaming encoder yields once this much is buffered.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`INITIAL_BUFFER`]-byte buffers (wired in through
/// tonic-prost-build's `codec_path`).
#[derive(Debug)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + prost::Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LeanDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LeanDecoder {
            inner: ProstCodec::<T, U>::raw_decoder(settings()),
            rules: crate::rules::checked_request(&U::full_name()),
        }
    }
}

/// prost's decoder, with a message that does not decode (garbage, a
/// truncated varint, a string that is not UTF-8) answered as the caller's
/// fault, INVALID_ARGUMENT, instead of INTERNAL; and a request that breaks
/// its field rules ([`crate::rules`]) refused with INVALID_ARGUMENT before
/// any handler sees it.
#[derive(Debug)]
pub struct LeanDecoder<U> {
    inner: ProstDecoder<U>,
    /// The descriptor to check against, for a request that has rules.
    rules: Option<&'static prost_reflect::MessageDescriptor>,
}

fn undecodable(s: tonic::Status) -> tonic::Status {
    if s.code() == tonic::Code::Internal {
        tonic::Status::invalid_argument(format!("the message does not decode: {}", s.message()))
    } else {
        s
    }
}

impl<U: prost::Message + Default> Decoder for LeanDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        let Some(desc) = self.rules else { return self.inner.decode(src).map_err(undecodable) };
        let bytes = src.copy_to_bytes(src.remaining());
        let dynamic = prost_reflect::DynamicMessage::decode(desc.clone(), bytes.clone())
            .map_err(|e| tonic::Status::invalid_argument(format!("the message does not decode: {e}")))?;
        crate::rules::check(&dynamic).map_err(|v| tonic::Status::invalid_argument(v.to_string()))?;
        U::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::invalid_argument(format!("the message does not decode: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
