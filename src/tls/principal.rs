//! The principal of a client that presented a certificate: `User:` and the certificate's
//! subject as an RFC 2253 string (`CN=alice,OU=ops,O=Example`), what Kafka's default
//! `ssl.principal.mapping.rules` (`DEFAULT`) gives: Java's `X500Principal.getName()`. The
//! DER is read with yasna (already in the tree under rcgen).

use yasna::models::ObjectIdentifier;
use yasna::{ASN1Result, BERReader, Tag};

/// The attribute names RFC 2253 prints by name; others print as a dotted OID with the value
/// in hex (`1.2.3=#0c05...`), as Java does.
const NAMES: &[(&[u64], &str)] = &[
    (&[2, 5, 4, 3], "CN"),
    (&[2, 5, 4, 7], "L"),
    (&[2, 5, 4, 8], "ST"),
    (&[2, 5, 4, 10], "O"),
    (&[2, 5, 4, 11], "OU"),
    (&[2, 5, 4, 6], "C"),
    (&[2, 5, 4, 9], "STREET"),
    (&[0, 9, 2342, 19200300, 100, 1, 25], "DC"),
    (&[0, 9, 2342, 19200300, 100, 1, 1], "UID"),
];

/// One attribute of a relative distinguished name: its OID, its string value if it is one,
/// and its whole DER (for attributes printed in hex).
type Attribute = (ObjectIdentifier, Option<String>, Vec<u8>);

fn attribute(r: BERReader<'_, '_>) -> ASN1Result<Attribute> {
    r.read_sequence(|r| {
        let oid = r.next().read_oid()?;
        let value = r.next().read_tagged_der()?;
        let text = value.as_str().map(str::to_string);
        Ok((
            oid,
            text,
            yasna::construct_der(|w| w.write_tagged_der(&value)),
        ))
    })
}

/// The subject of a DER certificate, as RDNs in the order they are encoded.
fn subject(der: &[u8]) -> ASN1Result<Vec<Vec<Attribute>>> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let subject = r.next().read_sequence(|r| {
                r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _ in 0..4 {
                    // serialNumber, signature, issuer, validity
                    r.next().read_der()?;
                }
                let mut rdns = Vec::new();
                r.next().read_sequence_of(|r| {
                    let mut rdn = Vec::new();
                    r.read_set_of(|r| {
                        rdn.push(attribute(r)?);
                        Ok(())
                    })?;
                    rdns.push(rdn);
                    Ok(())
                })?;
                // subjectPublicKeyInfo, then the optional unique ids and extensions.
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(rdns)
            })?;
            // signatureAlgorithm, signature
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(subject)
        })
    })
}

/// RFC 2253's escaping of a value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject of the DER certificate `der` as an RFC 2253 string: the last RDN first,
/// attributes of one RDN joined by '+'. `None` if the certificate does not parse.
pub fn subject_name(der: &[u8]) -> Option<String> {
    let rdns = subject(der).ok()?;
    let rdn_text = |rdn: &Vec<Attribute>| {
        rdn.iter()
            .map(|(oid, text, der)| {
                let name = NAMES
                    .iter()
                    .find(|(o, _)| oid.components().as_slice() == *o)
                    .map(|(_, n)| *n);
                match (name, text) {
                    (Some(name), Some(text)) => format!("{name}={}", escape(text)),
                    _ => {
                        let dotted: Vec<String> =
                            oid.components().iter().map(u64::to_string).collect();
                        let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
                        format!("{}=#{hex}", dotted.join("."))
                    }
                }
            })
            .collect::<Vec<_>>()
            .join("+")
    };
    Some(
        rdns.iter()
            .rev()
            .map(rdn_text)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// A TLS client's principal: `User:<subject>` of its certificate, or `None` without one.
pub fn of_certificate(der: &[u8]) -> Option<String> {
    subject_name(der).map(|s| format!("User:{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate-shaped DER whose subject's RDNs are `rdns`, in encoding order (the
    /// parser skips the other fields whatever they hold).
    fn with_subject(rdns: &[&[(&[u64], &str)]]) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_tagged(Tag::context(0), |w| w.write_i64(2));
                    w.next().write_i64(1);
                    for _ in 0..3 {
                        w.next().write_sequence(|_| {});
                    }
                    w.next().write_sequence_of(|w| {
                        for rdn in rdns {
                            w.next().write_set_of(|w| {
                                for (oid, value) in rdn.iter() {
                                    w.next().write_sequence(|w| {
                                        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                                        w.next().write_utf8_string(value);
                                    });
                                }
                            });
                        }
                    });
                    w.next().write_sequence(|_| {});
                });
                w.next().write_sequence(|_| {});
                w.next().write_bitvec_bytes(&[0], 8);
            })
        })
    }

    #[test]
    fn a_certificates_subject_prints_as_rfc_2253_last_rdn_first() {
        let der = with_subject(&[
            &[(&[2, 5, 4, 6], "DE")],
            &[(&[2, 5, 4, 10], "Example, Inc.")],
            &[(&[2, 5, 4, 11], "ops"), (&[1, 2, 3], "x")],
            &[(&[2, 5, 4, 3], "alice")],
        ]);
        assert_eq!(
            of_certificate(&der).as_deref(),
            Some("User:CN=alice,1.2.3=#0c0178+OU=ops,O=Example\\, Inc.,C=DE")
        );
        // (Within one RDN the attributes come in DER order, as the SET OF holds them.)
        // A real certificate, as rcgen makes them.
        let ca = crate::tls::ca::Authority::new("test CA").unwrap();
        let alice = ca.client("alice").unwrap();
        let der = rustls_pki_types::pem::PemObject::pem_slice_iter(alice.chain_pem.as_bytes())
            .next()
            .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| c.unwrap())
            .unwrap();
        assert_eq!(of_certificate(&der).as_deref(), Some("User:CN=alice"));
        assert_eq!(subject_name(b"not a certificate"), None);
        assert_eq!(escape(" #a+b "), "\\ #a\\+b\\ ");
    }
}
