//! Reference Integrity Manifests: TCG RIM SWID tags with an enveloped XML-DSig signature
//! (ECDSA P-384 / SHA-384, C14N 1.1), signed by a chain to the NVIDIA CoRIM signing root
//! (spec §1.7).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p384::ecdsa::Signature;
use p384::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha384};
use thiserror::Error;

use crate::UnixTime;
use crate::certs::{self, ChainError, ChainSummary, ParsedCert};
use crate::xml::{self, Element, XmlError};

const SWID_NS: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const HASH_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const C14N_11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const C14N_10: &str = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384: [&str; 2] = [
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha384",
];
/// Largest RIM accepted (real ones are about 20-26 KB).
pub const MAX_RIM_LEN: usize = 1 << 20;

/// Why a RIM is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RimError {
    /// Larger than [`MAX_RIM_LEN`].
    #[error("RIM is {len} bytes, more than {MAX_RIM_LEN}")]
    CheckSize { len: usize },
    /// Not well-formed (or uses a refused XML feature).
    #[error("RIM XML")]
    ParseXml(#[source] XmlError),
    /// The root is not a SWID `SoftwareIdentity`.
    #[error("root element is not a SWID SoftwareIdentity")]
    CheckRootElement,
    /// A required element is missing or repeated.
    #[error("expected exactly one {name} element")]
    FindElement { name: &'static str },
    /// A required attribute is missing.
    #[error("element {element} lacks attribute {attribute}")]
    FindAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    /// A signature algorithm this verifier does not implement.
    #[error("unsupported {what} algorithm {uri:?}")]
    CheckAlgorithm { what: &'static str, uri: String },
    /// Base64 text does not decode.
    #[error("{field} is not valid base64")]
    DecodeBase64 { field: &'static str },
    /// A Resource entry is malformed.
    #[error("measurement entry {position}: {reason}")]
    ParseMeasurement {
        position: usize,
        reason: &'static str,
    },
    /// The same index twice.
    #[error("measurement index {index} appears twice")]
    CheckDuplicateIndex { index: u32 },
    /// A KeyInfo certificate does not parse.
    #[error("KeyInfo certificates")]
    ParseCertificates(#[source] ChainError),
    /// SHA-384 of the canonical document differs from DigestValue (edited after signing).
    #[error("document digest does not match the signed DigestValue")]
    VerifyDigest,
    /// SignatureValue does not verify with the signer certificate's key.
    #[error("SignatureValue does not verify with the signer certificate")]
    VerifySignature,
    /// The signing chain does not verify to the CoRIM root (or a cert expired).
    #[error("RIM signing chain")]
    VerifyChain(#[source] ChainError),
}

/// One golden measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenMeasurement {
    /// 0-based RIM index (SPDM block index − 1).
    pub index: u32,
    /// Whether it must be compared.
    pub active: bool,
    /// Expected size of the runtime value.
    pub size: usize,
    /// Accepted values (`Hash0..Hash{alternatives-1}`).
    pub alternatives: Vec<Vec<u8>>,
    /// Entry name (e.g. `Measurement_7`).
    pub name: String,
}

/// A parsed RIM (not yet verified).
#[derive(Debug, Clone)]
pub struct Rim {
    /// `SoftwareIdentity@tagId`.
    pub tag_id: String,
    /// `SoftwareIdentity@name` (e.g. `GH100`).
    pub name: String,
    /// `Meta@colloquialVersion` (driver version, or VBIOS version).
    pub version: String,
    /// `Meta@FirmwareManufacturerId` (the `oemid` claim), if present.
    pub firmware_manufacturer_id: Option<String>,
    /// All measurement entries in document order.
    pub measurements: Vec<GoldenMeasurement>,
    root: Element,
    signed_info_c14n: String,
    digest_value: Vec<u8>,
    signature_value: Vec<u8>,
    certificates: Vec<ParsedCert>,
}

/// The outcome of [`Rim::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RimVerification {
    /// Every failed step (empty: digest, signature and chain verify).
    pub failures: Vec<RimError>,
    /// The verified chain, when it verified.
    pub chain: Option<ChainSummary>,
}

fn exactly_one<'a>(
    parent: &'a Element,
    namespace: &'a str,
    local: &'a str,
    name: &'static str,
) -> Result<&'a Element, RimError> {
    let mut found = parent.children_named(namespace, local);
    match (found.next(), found.next()) {
        (Some(e), None) => Ok(e),
        _ => Err(RimError::FindElement { name }),
    }
}

fn algorithm<'a>(element: &'a Element, name: &'static str) -> Result<&'a str, RimError> {
    element
        .attribute("Algorithm")
        .ok_or(RimError::FindAttribute {
            element: name,
            attribute: "Algorithm",
        })
}

fn base64_text(element: &Element, field: &'static str) -> Result<Vec<u8>, RimError> {
    let text: String = element.text().split_whitespace().collect();
    STANDARD
        .decode(text.as_bytes())
        .map_err(|_| RimError::DecodeBase64 { field })
}

impl Rim {
    /// Parses the SWID tag, its measurements and the XML-DSig structure. Algorithms other than
    /// the one profile NVIDIA uses are refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, RimError> {
        if bytes.len() > MAX_RIM_LEN {
            return Err(RimError::CheckSize { len: bytes.len() });
        }
        let root = xml::parse(bytes).map_err(RimError::ParseXml)?;
        if root.namespace != SWID_NS || root.local != "SoftwareIdentity" {
            return Err(RimError::CheckRootElement);
        }
        let tag_id = root.attribute("tagId").unwrap_or_default().to_owned();
        let name = root.attribute("name").unwrap_or_default().to_owned();
        let meta = exactly_one(&root, SWID_NS, "Meta", "Meta")?;
        let version = meta
            .attribute("colloquialVersion")
            .ok_or(RimError::FindAttribute {
                element: "Meta",
                attribute: "colloquialVersion",
            })?
            .to_owned();
        let firmware_manufacturer_id = meta
            .attributes
            .iter()
            .find(|a| a.local == "FirmwareManufacturerId")
            .map(|a| a.value.clone());
        let payload = exactly_one(&root, SWID_NS, "Payload", "Payload")?;
        let measurements = parse_measurements(payload)?;

        let signature = exactly_one(&root, DSIG_NS, "Signature", "Signature")?;
        let signed_info = exactly_one(signature, DSIG_NS, "SignedInfo", "SignedInfo")?;
        let c14n = exactly_one(
            signed_info,
            DSIG_NS,
            "CanonicalizationMethod",
            "CanonicalizationMethod",
        )?;
        let c14n_uri = algorithm(c14n, "CanonicalizationMethod")?;
        if c14n_uri != C14N_11 && c14n_uri != C14N_10 {
            return Err(RimError::CheckAlgorithm {
                what: "canonicalization",
                uri: c14n_uri.to_owned(),
            });
        }
        let method = exactly_one(signed_info, DSIG_NS, "SignatureMethod", "SignatureMethod")?;
        let method_uri = algorithm(method, "SignatureMethod")?;
        if method_uri != ECDSA_SHA384 {
            return Err(RimError::CheckAlgorithm {
                what: "signature",
                uri: method_uri.to_owned(),
            });
        }
        let reference = exactly_one(signed_info, DSIG_NS, "Reference", "Reference")?;
        if reference.attribute("URI") != Some("") {
            return Err(RimError::CheckAlgorithm {
                what: "reference URI",
                uri: reference.attribute("URI").unwrap_or("<none>").to_owned(),
            });
        }
        let transforms = exactly_one(reference, DSIG_NS, "Transforms", "Transforms")?;
        let transform_uris = transforms
            .children_named(DSIG_NS, "Transform")
            .map(|t| algorithm(t, "Transform"))
            .collect::<Result<Vec<_>, _>>()?;
        match transform_uris.as_slice() {
            [ENVELOPED] => {}
            [ENVELOPED, c] if *c == C14N_11 || *c == C14N_10 => {}
            other => {
                return Err(RimError::CheckAlgorithm {
                    what: "transform",
                    uri: other.join(" "),
                });
            }
        }
        let digest_method = exactly_one(reference, DSIG_NS, "DigestMethod", "DigestMethod")?;
        let digest_uri = algorithm(digest_method, "DigestMethod")?;
        if !DIGEST_SHA384.contains(&digest_uri) {
            return Err(RimError::CheckAlgorithm {
                what: "digest",
                uri: digest_uri.to_owned(),
            });
        }
        let digest_value = base64_text(
            exactly_one(reference, DSIG_NS, "DigestValue", "DigestValue")?,
            "DigestValue",
        )?;
        let signature_value = base64_text(
            exactly_one(signature, DSIG_NS, "SignatureValue", "SignatureValue")?,
            "SignatureValue",
        )?;
        let key_info = exactly_one(signature, DSIG_NS, "KeyInfo", "KeyInfo")?;
        let x509_data = exactly_one(key_info, DSIG_NS, "X509Data", "X509Data")?;
        let certificates = x509_data
            .children_named(DSIG_NS, "X509Certificate")
            .enumerate()
            .map(|(index, e)| {
                let der = base64_text(e, "X509Certificate")?;
                ParsedCert::from_der(der, index).map_err(RimError::ParseCertificates)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let signed_info_c14n = xml::canonicalize(signed_info, None);
        Ok(Self {
            tag_id,
            name,
            version,
            firmware_manufacturer_id,
            measurements,
            signed_info_c14n,
            digest_value,
            signature_value,
            certificates,
            root,
        })
    }

    /// Verifies the document digest (enveloped signature removed, canonicalized), the ECDSA
    /// P-384 SignatureValue over the canonical SignedInfo with the signer certificate's key,
    /// and the signing chain to `root` at `now`. Every failing step is reported.
    pub fn verify(&self, root: &ParsedCert, now: UnixTime) -> RimVerification {
        let mut failures = Vec::new();
        if let Some(signature_element) = self.root.children_named(DSIG_NS, "Signature").next() {
            let document = xml::canonicalize(&self.root, Some(signature_element));
            let digest = Sha384::digest(document.as_bytes());
            if digest.as_slice() != self.digest_value.as_slice() {
                failures.push(RimError::VerifyDigest);
            }
        } else {
            failures.push(RimError::FindElement { name: "Signature" });
        }
        let signature_ok = self
            .certificates
            .first()
            .and_then(|signer| signer.p384_key(0).ok())
            .zip(Signature::from_slice(&self.signature_value).ok())
            .is_some_and(|(key, signature)| {
                key.verify(self.signed_info_c14n.as_bytes(), &signature)
                    .is_ok()
            });
        if !signature_ok {
            failures.push(RimError::VerifySignature);
        }
        let chain = certs::verify_chain(&self.certificates, root, certs::RIM_CHAIN_LEN, false, now);
        let chain = match chain {
            Ok(summary) => Some(summary),
            Err(error) => {
                failures.push(RimError::VerifyChain(error));
                None
            }
        };
        RimVerification { failures, chain }
    }

    /// The active measurements.
    pub fn active(&self) -> impl Iterator<Item = &GoldenMeasurement> {
        self.measurements.iter().filter(|m| m.active)
    }

    /// The signer certificates from KeyInfo (signer first).
    pub fn certificates(&self) -> &[ParsedCert] {
        &self.certificates
    }
}

fn parse_measurements(payload: &Element) -> Result<Vec<GoldenMeasurement>, RimError> {
    let mut out: Vec<GoldenMeasurement> = Vec::new();
    for (position, resource) in payload.children_named(SWID_NS, "Resource").enumerate() {
        if resource.attribute("type") != Some("Measurement") {
            continue;
        }
        let bad = |reason| RimError::ParseMeasurement { position, reason };
        let index: u32 = resource
            .attribute("index")
            .and_then(|v| v.parse().ok())
            .ok_or(bad("index is missing or not a number"))?;
        let active = match resource.attribute("active") {
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            _ => return Err(bad("active is not True/False")),
        };
        let alternatives: usize = resource
            .attribute("alternatives")
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=64).contains(n))
            .ok_or(bad("alternatives is missing or not in 1..=64"))?;
        let size: usize = resource
            .attribute("size")
            .and_then(|v| v.parse().ok())
            .ok_or(bad("size is missing or not a number"))?;
        let mut values = Vec::with_capacity(alternatives);
        for k in 0..alternatives {
            let local = format!("Hash{k}");
            let value = resource
                .attributes
                .iter()
                .find(|a| a.namespace == HASH_NS && a.local == local)
                .ok_or(bad("a HashN attribute is missing"))?;
            let bytes = hex::decode(&value.value).map_err(|_| bad("a HashN value is not hex"))?;
            values.push(bytes);
        }
        if out.iter().any(|m| m.index == index) {
            return Err(RimError::CheckDuplicateIndex { index });
        }
        out.push(GoldenMeasurement {
            index,
            active,
            size,
            alternatives: values,
            name: resource.attribute("name").unwrap_or_default().to_owned(),
        });
    }
    Ok(out)
}
