//! Deterministic compression of the archive.
//!
//! * gzip: flate2 (pure-Rust backend) at level 9, header mtime 0, no file name, OS byte 3
//!   (Unix), so the output matches in spirit `gzip -9n` and never depends on the build host.
//! * zstd: level 19, single-threaded, content size and checksum always written.

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;

/// gzip level (fixed).
pub const GZIP_LEVEL: u32 = 9;
/// gzip header OS byte: Unix.
pub const GZIP_OS_UNIX: u8 = 3;
/// zstd level (fixed).
pub const ZSTD_LEVEL: i32 = 19;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// gzip compression failed.
    #[error("Compress with gzip")]
    CompressGzip {
        #[source]
        source: std::io::Error,
    },
    /// zstd compression failed.
    #[error("Compress with zstd")]
    CompressZstd {
        #[source]
        source: std::io::Error,
    },
    /// An unknown compression name was given.
    #[error("Unknown compression {name:?}, expected none, gzip or zstd")]
    ParseCompression { name: String },
}

/// How the archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain cpio.
    None,
    /// gzip, level 9.
    Gzip,
    /// zstd, level 19.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

impl FromStr for Compression {
    type Err = CompressError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "none" => Ok(Self::None),
            "gzip" | "gz" => Ok(Self::Gzip),
            "zstd" | "zst" => Ok(Self::Zstd),
            _ => Err(CompressError::ParseCompression {
                name: name.to_owned(),
            }),
        }
    }
}

/// Compresses `data`; the same input always gives the same output.
pub fn compress(data: &[u8], compression: Compression) -> Result<Vec<u8>, CompressError> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => gzip(data).map_err(|source| CompressError::CompressGzip { source }),
        Compression::Zstd => zstd(data).map_err(|source| CompressError::CompressZstd { source }),
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
    encoder.write_all(data)?;
    encoder.finish()
}

fn zstd(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    compressor.set_parameter(CParameter::ChecksumFlag(true))?;
    compressor.set_parameter(CParameter::ContentSizeFlag(true))?;
    compressor.set_parameter(CParameter::DictIdFlag(false))?;
    compressor.compress(data)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn sample() -> Vec<u8> {
        (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn gzip_header_is_fixed() {
        let out = compress(&sample(), Compression::Gzip).unwrap();
        // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=2 (best) OS=3.
        assert_eq!(&out[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn zstd_round_trip_and_frame_flags() {
        let out = compress(&sample(), Compression::Zstd).unwrap();
        assert_eq!(&out[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        // Frame header descriptor: checksum flag (bit 2) set, dictionary id flag (bits 0-1) clear.
        assert_eq!(out[4] & 0b111, 0b100);
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), sample());
    }

    #[test]
    fn names() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
        }
        assert!(matches!(
            "xz".parse::<Compression>(),
            Err(CompressError::ParseCompression { name }) if name == "xz"
        ));
    }
}
