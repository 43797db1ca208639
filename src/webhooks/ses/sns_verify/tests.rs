//! Unit tests of the SNS verifier: certificate and subscribe URLs, AWS's
//! genuine signatures from the shared vectors (changed, shifted, respelled),
//! malformed signature fields, the crate's own signer and the `openssl` CLI
//! cross-check, the key cache, and PEM parsing.

use std::path::Path;
use std::process::Command;

use super::super::sns::shared_vectors;
use super::*;
use crate::simulate::sns_signer::{self, SignatureVersion, SnsSigner, test_signer};

const AWS_CERT_URL: &str = "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";

#[test]
fn cert_urls_on_sns_hosts_are_accepted() {
    for url in [
        "https://sns.us-east-2.amazonaws.com/x.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        "https://sns.us-gov-west-1.amazonaws.com/a/b/c.pem",
        "https://SNS.US-EAST-1.amazonaws.com:443/x.pem",
        AWS_CERT_URL,
    ] {
        assert!(validate_cert_url(url).is_ok(), "{url}");
    }
}

#[test]
fn cert_urls_elsewhere_are_refused() {
    for url in [
        "http://sns.us-east-2.amazonaws.com/x.pem",
        "https://sns.us-east-2.amazonaws.com.evil.com/x.pem",
        "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.amazonaws.com/x.pem",
        "https://sns..amazonaws.com/x.pem",
        "https://sns.us.east.2.amazonaws.com/x.pem",
        "https://sns.us-east-2.amazonaws.com./x.pem",
        "https://evilsns.us-east-2.amazonaws.com/x.pem",
        "https://sqs.us-east-2.amazonaws.com/x.pem",
        "https://sns.us-east-2.amazonaws.com/x.pem.txt",
        "https://sns.us-east-2.amazonaws.com/x",
        "https://sns.us-east-2.amazonaws.com/.pem",
        "https://sns.us-east-2.amazonaws.com/x.pem?a=b",
        "https://sns.us-east-2.amazonaws.com/x.pem#frag",
        "https://user@sns.us-east-2.amazonaws.com/x.pem",
        "https://user:pw@sns.us-east-2.amazonaws.com/x.pem",
        "https://evil.com@sns.us-east-2.amazonaws.com/x.pem",
        "https://sns.us-east-2.amazonaws.com:8443/x.pem",
        "https://52.94.1.1/x.pem",
        // S3 buckets named `sns` under the same wildcard certificate.
        "https://sns.s3-us-west-2.amazonaws.com/x.pem",
        "https://sns.s3.amazonaws.com/x.pem",
        "https://sns.us-east.amazonaws.com/x.pem",
        "https://sns.east-2.amazonaws.com/x.pem",
        "file:///sns.us-east-2.amazonaws.com/x.pem",
        "sns.us-east-2.amazonaws.com/x.pem",
        "",
    ] {
        assert!(
            matches!(validate_cert_url(url), Err(SnsError::UntrustedCertUrl(_))),
            "{url}"
        );
    }
}

#[test]
fn overlong_cert_urls_are_refused() {
    let path = "a/".repeat(MAX_CERT_URL_LEN / 2);
    let long = format!("https://sns.us-east-2.amazonaws.com/{path}x.pem");
    assert!(matches!(
        validate_cert_url(&long),
        Err(SnsError::UntrustedCertUrl(_))
    ));
    let fits = format!(
        "https://sns.us-east-2.amazonaws.com/{}x.pem",
        &path[..MAX_CERT_URL_LEN - 48]
    );
    assert!(fits.len() <= MAX_CERT_URL_LEN);
    validate_cert_url(&fits).unwrap();
}

#[test]
fn subscribe_urls_follow_the_host_rule() {
    assert!(
        validate_subscribe_url(
            "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:1:t&Token=abc"
        )
        .is_ok()
    );
    assert!(
        validate_subscribe_url(
            "https://sns.cn-northwest-1.amazonaws.com.cn/?Action=ConfirmSubscription"
        )
        .is_ok()
    );
    for url in [
        "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
        "https://sns.us-west-2.amazonaws.com.evil.com/?Action=ConfirmSubscription",
        "https://u:p@sns.us-west-2.amazonaws.com/",
        "https://sns.us-west-2.amazonaws.com:444/",
    ] {
        assert!(
            matches!(
                validate_subscribe_url(url),
                Err(SnsError::UntrustedSubscribeUrl(_))
            ),
            "{url}"
        );
    }
}

fn aws_vector(name: &str) -> (SnsEnvelope, PathBuf) {
    let dir = shared_vectors("sns");
    let envelope = SnsEnvelope::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap();
    assert_eq!(envelope.signing_cert_url, AWS_CERT_URL);
    (envelope, dir)
}

fn flip_last_char(text: &mut String) {
    let last = text.pop().unwrap();
    text.push(if last == 'x' { 'y' } else { 'x' });
}

/// Genuine AWS-signed notifications (aws/aws-php-sns-message-validator
/// fixtures) verify offline through the cert dir, and any change to a
/// signed byte or to the signature version makes them fail.
#[tokio::test]
async fn aws_signed_vectors_verify_and_tampering_fails() {
    for name in [
        "php2022-notification-v1-subject.json",
        "php2022-notification-v2-subject.json",
    ] {
        let (genuine, dir) = aws_vector(name);
        let verifier = SnsVerifier::new(Some(dir));
        verifier.verify(&genuine).await.unwrap();
        verifier.verify(&genuine).await.unwrap();

        let tampered: [fn(&mut SnsEnvelope); 6] = [
            |e| flip_last_char(&mut e.message),
            |e| flip_last_char(e.subject.as_mut().unwrap()),
            |e| e.subject = None,
            |e| flip_last_char(&mut e.timestamp),
            |e| flip_last_char(&mut e.message_id),
            |e| flip_last_char(&mut e.topic_arn),
        ];
        for tamper in tampered {
            let mut envelope = genuine.clone();
            tamper(&mut envelope);
            assert!(matches!(
                verifier.verify(&envelope).await,
                Err(SnsError::SignatureMismatch)
            ));
        }
        let mut other_version = genuine.clone();
        other_version.signature_version = if genuine.signature_version == "2" {
            "1"
        } else {
            "2"
        }
        .to_owned();
        assert!(matches!(
            verifier.verify(&other_version).await,
            Err(SnsError::SignatureMismatch)
        ));
    }
}

/// AWS's genuine notification, replayed with its subject moved into
/// `MessageId` (the same signed bytes), is refused for the line break.
#[tokio::test]
async fn an_aws_vector_with_its_subject_shifted_into_the_message_id_is_refused() {
    for name in [
        "php2022-notification-v1-subject.json",
        "php2022-notification-v2-subject.json",
    ] {
        let (genuine, dir) = aws_vector(name);
        let verifier = SnsVerifier::new(Some(dir));
        let subject = genuine.subject.clone().unwrap();
        let shifted = SnsEnvelope {
            message_id: format!("{}\nSubject\n{subject}", genuine.message_id),
            subject: None,
            ..genuine.clone()
        };
        assert!(matches!(
            verifier.verify(&shifted).await,
            Err(SnsError::LineBreak("MessageId"))
        ));
        verifier.verify(&genuine).await.unwrap();
    }
}

/// AWS's genuine notifications with their keys spelled as a Lambda relay
/// writes them (`SigningCertUrl`, `UnsubscribeUrl`) still verify.
#[tokio::test]
async fn aws_vectors_in_the_lambda_spelling_verify() {
    let dir = shared_vectors("sns");
    let verifier = SnsVerifier::new(Some(dir.clone()));
    for name in [
        "php2022-notification-v1-subject.json",
        "php2022-notification-v2-subject.json",
    ] {
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        let object = json.as_object_mut().unwrap();
        for (aws, lambda) in [
            ("SigningCertURL", "SigningCertUrl"),
            ("UnsubscribeURL", "UnsubscribeUrl"),
        ] {
            let value = object.remove(aws).unwrap();
            object.insert(lambda.to_owned(), value);
        }
        let envelope = SnsEnvelope::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(envelope.signing_cert_url, AWS_CERT_URL);
        verifier.verify(&envelope).await.unwrap();
    }
}

#[tokio::test]
async fn malformed_signature_fields_are_refused_before_any_fetch() {
    let (genuine, dir) = aws_vector("php2022-notification-v2-subject.json");
    let verifier = SnsVerifier::new(Some(dir));
    type Tamper = fn(&mut SnsEnvelope);
    type Expected = fn(&SnsError) -> bool;
    let cases: [(Tamper, Expected); 6] = [
        (
            |e| e.signature_version = "3".into(),
            |r| matches!(r, SnsError::BadSignatureVersion(_)),
        ),
        (
            |e| e.signature_version.clear(),
            |r| matches!(r, SnsError::MissingField("SignatureVersion")),
        ),
        (
            |e| e.signature = "not base64!".into(),
            |r| matches!(r, SnsError::BadSignatureEncoding),
        ),
        (
            |e| e.signature.clear(),
            |r| matches!(r, SnsError::MissingField("Signature")),
        ),
        (
            |e| {
                e.signing_cert_url = "https://evil.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem".into()
            },
            |r| matches!(r, SnsError::UntrustedCertUrl(_)),
        ),
        (
            |e| e.r#type = "Other".into(),
            |r| matches!(r, SnsError::UnknownType(_)),
        ),
    ];
    for (tamper, expected) in cases {
        let mut envelope = genuine.clone();
        tamper(&mut envelope);
        let error = verifier.verify(&envelope).await.unwrap_err();
        assert!(expected(&error), "{error}");
    }
    let short = SnsEnvelope {
        signature: STANDARD.encode([0u8; 8]),
        ..genuine
    };
    assert!(matches!(
        verifier.verify(&short).await,
        Err(SnsError::SignatureMismatch)
    ));
}

/// SNS messages of every type, as JSON, on the test certificate's host.
fn messages_of_every_type() -> Vec<serde_json::Value> {
    let subscribe_url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription";
    [
        ("Notification", serde_json::json!({"Subject": "s"})),
        ("Notification", serde_json::json!({})),
        (
            "SubscriptionConfirmation",
            serde_json::json!({"SubscribeURL": subscribe_url, "Token": "tok"}),
        ),
        (
            "UnsubscribeConfirmation",
            serde_json::json!({"SubscribeURL": subscribe_url, "Token": "tok"}),
        ),
    ]
    .into_iter()
    .map(|(kind, extra)| {
        let mut json = serde_json::json!({
            "Type": kind,
            "MessageId": "m-1",
            "TopicArn": "arn:aws:sns:eu-west-1:1:topic",
            "Message": "{\"eventType\":\"Send\"}\nline two é",
            "Timestamp": "2024-01-01T00:00:00.000Z",
        });
        json.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json
    })
    .collect()
}

/// Messages of every type, signed with both versions by the crate's SNS
/// signer (which builds AWS's canonical string with its own code),
/// verify; a changed message then fails.
#[tokio::test]
async fn signed_messages_of_every_type_and_version_verify() {
    let signer = test_signer();
    let dir = tempfile::tempdir().unwrap();
    let name = signer.cert_url().rsplit('/').next().unwrap();
    std::fs::write(dir.path().join(name), signer.certificate_pem().unwrap()).unwrap();
    let verifier = SnsVerifier::new(Some(dir.path().to_owned()));
    for message in messages_of_every_type() {
        for version in [SignatureVersion::V1, SignatureVersion::V2] {
            let mut signed = message.clone();
            signer.sign(&mut signed, version).unwrap();
            let mut envelope = SnsEnvelope::parse(signed.to_string().as_bytes()).unwrap();
            verifier.verify(&envelope).await.unwrap();

            flip_last_char(&mut envelope.message);
            assert!(matches!(
                verifier.verify(&envelope).await,
                Err(SnsError::SignatureMismatch)
            ));
        }
    }
}

/// Runs the `openssl` CLI, failing the test when it
/// is missing or fails.
fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("this cross-check needs the openssl cli: install openssl");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
    output.stdout
}

/// The cross-check against an RSA implementation independent of ours:
/// the `openssl` CLI makes a key and certificate and signs each canonical
/// string (SHA1 and SHA256); its signatures are byte for byte the crate
/// signer's with the same key (PKCS#1 v1.5 is deterministic), and they
/// verify. An EC certificate, which openssl makes too, is refused.
#[tokio::test]
async fn openssl_signatures_equal_ours_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let cert_name = "SimpleNotificationService-openssl.pem";
    let rsa = [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
    ];
    let subject = [
        "-subj",
        "/CN=sns.amazonaws.com",
        "-keyout",
        "key.pem",
        "-out",
    ];
    openssl(&[&rsa[..], &subject[..], &[cert_name]].concat(), dir.path());
    let ec = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    let ec_files = [
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=ec",
        "-keyout",
        "ec-key.pem",
    ];
    openssl(
        &[&ec[..], &ec_files[..], &["-out", "ec.pem"]].concat(),
        dir.path(),
    );
    assert!(matches!(
        rsa_key_from_pem(&std::fs::read(dir.path().join("ec.pem")).unwrap()),
        Err(SnsError::CertificateUnavailable(_))
    ));

    let cert_url = format!("https://sns.eu-west-1.amazonaws.com/{cert_name}");
    let key = std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
    let ours = SnsSigner::from_pkcs8_pem(&key, cert_url.clone()).unwrap();
    let verifier = SnsVerifier::new(Some(dir.path().to_owned()));
    for mut message in messages_of_every_type() {
        for (version, digest) in [
            (SignatureVersion::V1, "-sha1"),
            (SignatureVersion::V2, "-sha256"),
        ] {
            let canonical = sns_signer::string_to_sign(&message).unwrap();
            std::fs::write(dir.path().join("to-sign.txt"), &canonical).unwrap();
            let theirs = STANDARD.encode(openssl(
                &["dgst", digest, "-sign", "key.pem", "to-sign.txt"],
                dir.path(),
            ));
            assert_eq!(ours.signature(version, &canonical).unwrap(), theirs);
            message["SignatureVersion"] = version.as_str().into();
            message["SigningCertURL"] = cert_url.as_str().into();
            message["Signature"] = theirs.into();
            let envelope = SnsEnvelope::parse(message.to_string().as_bytes()).unwrap();
            verifier.verify(&envelope).await.unwrap();
        }
    }
}

/// A bad file in the cert dir is an error (never a silent download), and
/// the failure is not cached: fixing the file makes the next call succeed.
#[tokio::test]
async fn cert_dir_failures_are_not_cached() {
    let (genuine, vectors) = aws_vector("php2022-notification-v2-subject.json");
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir
        .path()
        .join("SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem");
    std::fs::write(
        &cert_file,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let verifier = SnsVerifier::new(Some(dir.path().to_owned()));
    assert!(matches!(
        verifier.verify(&genuine).await,
        Err(SnsError::CertificateUnavailable(_))
    ));
    assert!(verifier.keys.lock().unwrap().is_empty());
    std::fs::copy(
        vectors.join("SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"),
        &cert_file,
    )
    .unwrap();
    verifier.verify(&genuine).await.unwrap();
    assert_eq!(verifier.keys.lock().unwrap().len(), 1);
}

/// Every spelling of one certificate URL (host case, default port, dot
/// segments, characters the URL parser drops) verifies through one cache
/// entry, keyed by the normalized URL.
#[tokio::test]
async fn spellings_of_one_cert_url_share_one_cache_entry() {
    let (genuine, dir) = aws_vector("php2022-notification-v2-subject.json");
    let verifier = SnsVerifier::new(Some(dir));
    let name = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";
    let spellings = [
        AWS_CERT_URL.to_owned(),
        format!("https://SNS.US-EAST-2.AmazonAWS.com/{name}"),
        format!("HTTPS://sns.us-east-2.amazonaws.com/{name}"),
        format!("https://sns.us-east-2.amazonaws.com:443/{name}"),
        format!("https://sns.us-east-2.amazonaws.com/a/../{name}"),
        format!("https://sns.us-east-2.amazonaws.com/./{name}"),
        format!("https://sns.us-east-2.amazonaws.com/a/b/%2e%2E/../{name}"),
        format!("https://sns.us-east-2.amazonaws.com/a/.%2E/{name}"),
        format!(
            "https://sns.us-east-2.amazonaws.com/{}\t.pem",
            &name[..name.len() - 4]
        ),
        format!(" https://sns.us-east-2.amazonaws.com/{name} "),
    ];
    for spelling in spellings {
        let envelope = SnsEnvelope {
            signing_cert_url: spelling.clone(),
            ..genuine.clone()
        };
        verifier.verify(&envelope).await.unwrap();
        let keys = verifier.keys.lock().unwrap();
        assert_eq!(keys.len(), 1, "{spelling:?}");
        assert!(keys.contains(AWS_CERT_URL), "{spelling:?}");
    }
}

/// A flood of distinct valid URLs (prefixes before the cert dir's file
/// name) all load, and the cache stays at its capacity, evicting the
/// least recently used: a URL in steady use stays cached. Every 16th
/// goes through the whole verification (an RSA check costs some 5 ms
/// unoptimised; loading a key is what the cache is about).
#[tokio::test]
async fn distinct_cert_urls_stay_within_the_cache_capacity() {
    let (genuine, dir) = aws_vector("php2022-notification-v1-subject.json");
    let verifier = SnsVerifier::new(Some(dir));
    let name = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";
    let flood = |i: usize| format!("https://sns.us-east-2.amazonaws.com/p{i}/{name}");
    let rounds = KEY_CACHE_CAPACITY * 8;
    for i in 0..rounds {
        let url = if i % (KEY_CACHE_CAPACITY / 2) == 0 {
            AWS_CERT_URL.to_owned()
        } else {
            flood(i)
        };
        if i % 16 == 0 || i + 1 == rounds {
            let envelope = SnsEnvelope {
                signing_cert_url: url,
                ..genuine.clone()
            };
            verifier.verify(&envelope).await.unwrap();
        } else {
            verifier
                .public_key(&validate_cert_url(&url).unwrap())
                .await
                .unwrap();
        }
        assert!(verifier.keys.lock().unwrap().len() <= KEY_CACHE_CAPACITY);
    }
    let keys = verifier.keys.lock().unwrap();
    assert_eq!(keys.len(), KEY_CACHE_CAPACITY);
    assert!(keys.contains(AWS_CERT_URL));
    assert!(!keys.contains(&flood(1)));
    assert!(keys.contains(&flood(rounds - 1)));
}

/// A full cache evicts its least recently used entry, not the oldest.
#[test]
fn the_least_recently_used_key_is_evicted_first() {
    let mut cache = KeyCache::default();
    let keys: Vec<String> = (0..=KEY_CACHE_CAPACITY).map(|i| format!("k{i}")).collect();
    let first = cache.cell(&keys[0]);
    for key in &keys[1..KEY_CACHE_CAPACITY] {
        cache.cell(key);
    }
    assert_eq!(cache.len(), KEY_CACHE_CAPACITY);
    assert!(Arc::ptr_eq(&cache.cell(&keys[0]), &first), "a hit");
    cache.cell(&keys[KEY_CACHE_CAPACITY]);
    assert_eq!(cache.len(), KEY_CACHE_CAPACITY);
    assert!(cache.contains(&keys[0]) && cache.contains(&keys[KEY_CACHE_CAPACITY]));
    assert!(!cache.contains(&keys[1]));
}

/// Concurrent first uses share one cache entry and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_entry() {
    let (genuine, dir) = aws_vector("php2022-notification-v1-subject.json");
    let verifier = Arc::new(SnsVerifier::new(Some(dir)));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (verifier, envelope) = (Arc::clone(&verifier), genuine.clone());
            tokio::spawn(async move { verifier.verify(&envelope).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(verifier.keys.lock().unwrap().len(), 1);
}

#[test]
fn aws_certificate_parses_with_surrounding_whitespace() {
    let dir = shared_vectors("sns");
    let pem = std::fs::read_to_string(
        dir.join("SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"),
    )
    .unwrap();
    rsa_key_from_pem(pem.as_bytes()).unwrap();
    rsa_key_from_pem(format!("{}\r\n\r\n", pem.trim_end()).as_bytes()).unwrap();
    rsa_key_from_pem(
        format!(
            "subject=CN = sns.amazonaws.com\n\n{}",
            pem.replace('\n', "\r\n")
        )
        .as_bytes(),
    )
    .unwrap();
    rsa_key_from_pem(format!("{pem}{pem}").as_bytes()).unwrap();
}

#[test]
fn non_rsa_or_garbage_pem_is_refused() {
    for pem in [
        &b""[..],
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    ] {
        assert!(matches!(
            rsa_key_from_pem(pem),
            Err(SnsError::CertificateUnavailable(_))
        ));
    }
}
