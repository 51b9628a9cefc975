"""Media sniffing by magic bytes, and content-addressed storage in a real Redis."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis.asyncio as aioredis

from gateway.media import MediaBlob, MediaError, check_media, sniff, store_media
from pipelines.protocol import media_key

PAD = b"\0" * 40
SAMPLES = [
    # (kind, bytes, format name, canonical mime)
    ("image", b"\x89PNG\r\n\x1a\n" + PAD, "PNG", "image/png"),
    ("image", b"\xff\xd8\xff\xdb" + PAD, "JPEG", "image/jpeg"),
    ("image", b"GIF89a" + PAD, "GIF", "image/gif"),
    ("image", b"GIF87a" + PAD, "GIF", "image/gif"),
    ("image", b"RIFF\x10\0\0\0WEBPVP8 " + PAD, "WEBP", "image/webp"),
    ("image", b"BM" + PAD, "BMP", "image/bmp"),
    ("audio", b"RIFF\x10\0\0\0WAVEfmt " + PAD, "WAV", "audio/wav"),
    ("audio", b"fLaC" + PAD, "FLAC", "audio/flac"),
    ("audio", b"OggS" + PAD, "OGG", "audio/ogg"),
    ("audio", b"ID3\x04" + PAD, "MP3", "audio/mpeg"),
    ("audio", b"\xff\xfb\x90\x64" + PAD, "MP3", "audio/mpeg"),
    ("video", b"\0\0\0\x20ftypisom" + PAD, "MP4/MOV", "video/mp4"),
    ("video", b"\0\0\0\x14ftypqt  " + PAD, "MP4/MOV", "video/quicktime"),
    ("video", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + PAD, "WEBM/MKV", "video/webm"),
    (
        "video",
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska" + PAD,
        "WEBM/MKV",
        "video/x-matroska",
    ),
]


@pytest.mark.parametrize(("kind", "data", "name", "mime"), SAMPLES, ids=[f"{s[2]}-{s[3]}" for s in SAMPLES])
def test_sniff_recognises_each_format(kind, data, name, mime):
    fmt = sniff(data)
    assert fmt is not None and (fmt.kind, fmt.name) == (kind, name)
    assert check_media(kind, data, "", 1 << 20) == mime  # no declared mime: taken from the bytes
    assert check_media(kind, data, mime, 1 << 20) == mime  # the right mime: accepted


@pytest.mark.parametrize(
    ("kind", "data", "mime"),
    [
        ("image", b"\xff\xd8\xff\xe0" + PAD, "image/jpg"),
        ("image", b"BM" + PAD, "image/x-ms-bmp"),
        ("audio", b"RIFF\x10\0\0\0WAVEfmt " + PAD, "audio/x-wav"),
        ("audio", b"OggS" + PAD, "audio/ogg; codecs=opus"),
        ("audio", b"ID3\x03" + PAD, "audio/MP3"),
        ("video", b"\0\0\0\x20ftypisom" + PAD, "video/quicktime"),
    ],
)
def test_mime_aliases_and_parameters_are_accepted(kind, data, mime):
    check_media(kind, data, mime, 1 << 20)


@pytest.mark.parametrize(
    ("kind", "data", "mime", "message"),
    [
        (
            "image",
            b"hello world" + PAD,
            "image/png",
            "not a decodable image (mime image/png, bytes do not start",
        ),
        (
            "image",
            b"\xff\xd8\xff\xe0" + PAD,
            "image/gif",
            "mime_type image/gif does not match the bytes (they are JPEG",
        ),
        ("image", b"hello world" + PAD, "", "bytes match none of PNG, JPEG, GIF, WEBP, BMP"),
        ("audio", b"\x89PNG\r\n\x1a\n" + PAD, "audio/wav", "they look like PNG image"),
        ("video", b"fLaC" + PAD, "", "bytes match none of MP4/MOV, WEBM/MKV; they look like FLAC audio"),
        ("audio", b"\xff\xf1\x50\x80" + PAD, "", "not a decodable audio"),  # AAC ADTS, not MP3
        ("image", b"", "image/png", "is empty"),
        ("image", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png", "is 108 bytes, more than the limit of 64"),
        (
            "video",
            b"\0\0\0\x20ftypisom" + PAD,
            "video/avi",
            "mime_type 'video/avi' is not a supported video type",
        ),
    ],
)
def test_bad_media_is_explained(kind, data, mime, message):
    with pytest.raises(MediaError) as info:
        check_media(kind, data, mime, 64 if len(data) > 100 else 1 << 20)
    assert message in str(info.value)


def test_store_media_writes_once_with_a_ttl(redis_url):
    data = b"\x89PNG\r\n\x1a\n" + b"payload-of-test_store_media"
    blob = MediaBlob.of(data)
    assert blob.key == media_key(hashlib.sha256(data).hexdigest())

    async def run():
        r = aioredis.Redis.from_url(redis_url)
        try:
            await r.delete(blob.key)
            await store_media(r, [blob, blob], ttl_s=100)
            assert await r.get(blob.key) == data
            assert 90 < await r.ttl(blob.key) <= 100
            await store_media(r, [blob], ttl_s=500)  # stored again: TTL renewed, bytes unchanged
            assert 490 < await r.ttl(blob.key) <= 500
            assert await r.get(blob.key) == data
        finally:
            await r.delete(blob.key)
            await r.aclose()

    asyncio.run(run())
