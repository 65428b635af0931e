"""Drives the guest API with the real dstack SDK (dstack-sdk from PyPI) and prints one JSON
object with what it got. Usage: sdk_client.py DSTACK_SOCKET TAPPD_SOCKET REPORT_DATA_HEX.

Run by tests/sdk.rs, which checks the results; this script only records them, except that it
fails loudly when a call that must succeed raises."""

import hashlib
import json
import sys
import warnings

import httpx
from dstack_sdk import DstackClient, TappdClient


def expect_http_error(call):
    """Runs a call that must fail with an HTTP error; returns status and error text."""
    try:
        call()
    except httpx.HTTPStatusError as e:
        return {"status": e.response.status_code, "error": e.response.json().get("error", "")}
    raise SystemExit("call unexpectedly succeeded")


def main():
    socket, legacy_socket, report_data_hex = sys.argv[1:4]
    report_data = bytes.fromhex(report_data_hex)
    client = DstackClient(socket)
    out = {}

    info = client.info()
    out["info"] = {
        "app_id": info.app_id,
        "instance_id": info.instance_id,
        "compose_hash": info.compose_hash,
        "app_name": info.app_name,
        "key_provider_info": info.key_provider_info,
        "mr_aggregated": info.mr_aggregated,
        "rtmr3": info.tcb_info.rtmr3,
        "mrtd": info.tcb_info.mrtd,
        "tcb_compose_hash": info.tcb_info.compose_hash,
        "event_log_len": len(info.tcb_info.event_log),
    }

    quote = client.get_quote(report_data)
    out["quote"] = {
        "quote": quote.quote,
        "report_data": quote.report_data,
        "event_log": quote.event_log,
        "vm_config": quote.vm_config,
        "replayed_rtmr3": quote.replay_rtmrs()[3],
        "events": [e.event for e in quote.decode_event_log()],
    }

    # Bad requests: each is an HTTP error, and the server keeps serving.
    out["reserved_event"] = expect_http_error(lambda: client.emit_event("compose-hash", b"x"))
    key = client.get_key("some/path", "sdk-test")
    out["get_key"] = {
        "key": key.decode_key().hex(),
        "signature_chain": [s.hex() for s in key.decode_signature_chain()],
    }
    tls = client.get_tls_key(
        subject="sdk.example",
        alt_names=["sdk.example"],
        usage_ra_tls=True,
        usage_server_auth=True,
        usage_client_auth=True,
    )
    out["get_tls_key"] = {"key": tls.key, "certificate_chain": list(tls.certificate_chain)}
    # The SDK refuses more than 64 bytes itself, so send this one with plain httpx.
    out["oversize_get_quote"] = expect_http_error(
        lambda: raw_post(socket, "/GetQuote", {"report_data": "00" * 65})
    )

    # The SDK probes Version before an ed25519 key and before the 0.5.7 GetTlsKey options.
    version = client.version()
    out["version"] = {"version": version.version, "rev": version.rev}
    ed_key = client.get_key("some/path", "sdk-test", algorithm="ed25519")
    out["get_key_ed25519"] = {
        "key": ed_key.decode_key().hex(),
        "signature_chain": [s.hex() for s in ed_key.decode_signature_chain()],
    }
    out["sign"] = {}
    message = b"signed by the sdk test"
    digest = hashlib.sha256(message).digest()
    for algorithm, data in [
        ("ed25519", message),
        ("secp256k1", message),
        ("secp256k1_prehashed", digest),
    ]:
        signed = client.sign(algorithm, data)
        verified = client.verify(algorithm, data, signed.decode_signature(), signed.decode_public_key())
        tampered = client.verify(algorithm, data[:-1] + b"!", signed.decode_signature(), signed.decode_public_key())
        out["sign"][algorithm] = {
            "data": data.hex(),
            "signature": signed.signature,
            "public_key": signed.public_key,
            "signature_chain": list(signed.signature_chain),
            "valid": verified.valid,
            "tampered_valid": tampered.valid,
        }
    attest = client.attest(report_data)
    out["attest"] = attest.attestation
    out["gpu_info"] = raw_post(socket, "/GpuInfo", {})
    timed = client.get_tls_key(
        subject="timed.example",
        usage_server_auth=True,
        not_before=1_700_000_000,
        not_after=1_900_000_000,
        with_app_info=True,
    )
    out["get_tls_key_timed"] = {"key": timed.key, "certificate_chain": list(timed.certificate_chain)}

    emitted = client.emit_event("sdk-test-event", b"hello from the sdk")
    out["emit_event_reply"] = emitted
    after = client.get_quote(report_data)
    out["quote_after_event"] = {
        "quote": after.quote,
        "replayed_rtmr3": after.replay_rtmrs()[3],
        "events": [e.event for e in after.decode_event_log()],
    }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tappd = TappdClient(legacy_socket)
        tappd_quote = tappd.tdx_quote(report_data, "sha512")
        tappd_raw = tappd.tdx_quote(report_data, "raw")
        tappd_info = tappd.info()
        tappd_keccak = tappd.tdx_quote(report_data, "keccak256")
        tappd_derived = tappd.derive_key("legacy/path", "legacy.example", ["legacy.example"])
    out["tappd"] = {
        "sha512_quote": tappd_quote.quote,
        "raw_quote": tappd_raw.quote,
        "info_app_id": tappd_info.app_id,
        "info_rtmr3": tappd_info.tcb_info.rtmr3,
        "keccak256_quote": tappd_keccak.quote,
        "derive_key": {"key": tappd_derived.key, "certificate_chain": list(tappd_derived.certificate_chain)},
    }
    print(json.dumps(out))


def raw_post(socket, path, payload):
    """A plain httpx POST over the socket, for a request the SDK itself refuses to send."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url="http://localhost") as c:
        r = c.post(path, json=payload)
        r.raise_for_status()
        return r.json()


if __name__ == "__main__":
    main()
