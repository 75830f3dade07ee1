"""A minimal iSCSI initiator (RFC 7143) for one job: send a SCSI WRITE(10) to a LUN
and report the target's answer.

QEMU never sends a write to a write-protected LUN (block/iscsi.c refuses the
read-write open after MODE SENSE), so this is how the tests prove that the
*server* refuses writes, from root, on the wire. Only what tgtd needs:
login without authentication, one command, R2T/Data-Out if asked for.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

INITIATOR = "iqn.2024-01.org.qemu.qemublock:tests"
LOGIN_REQ, LOGIN_RSP = 0x03, 0x23
SCSI_CMD, SCSI_RSP = 0x01, 0x21
DATA_OUT, R2T, NOP_IN, REJECT = 0x05, 0x31, 0x20, 0x3F


@dataclass
class ScsiResult:
    status: int  # SCSI status byte: 0 GOOD, 2 CHECK CONDITION
    sense_key: int | None = None
    asc: int | None = None
    ascq: int | None = None

    def describe(self) -> str:
        if self.status == 0:
            return "GOOD"
        return (f"status 0x{self.status:02x}, sense key 0x{self.sense_key or 0:x}, "
                f"ASC/ASCQ 0x{self.asc or 0:02x}/0x{self.ascq or 0:02x}")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _bhs(byte0: int, byte1: int, data_len: int, rest: bytes) -> bytes:
    """48-byte header: opcode, flags, 2 bytes, TotalAHSLength 0, DataSegmentLength, bytes 8..47."""
    assert len(rest) == 40
    return bytes([byte0, byte1, 0, 0, 0]) + data_len.to_bytes(3, "big") + rest


class _Conn:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def send(self, header: bytes, data: bytes = b"") -> None:
        self.sock.sendall(header + _pad(data))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"target closed the connection ({len(buf)}/{n} bytes)")
            buf += chunk
        return buf

    def recv(self) -> tuple[bytes, bytes]:
        bhs = self._exact(48)
        ahs = bhs[4] * 4
        dlen = int.from_bytes(bhs[5:8], "big")
        if ahs:
            self._exact(ahs)
        data = self._exact(dlen + (-dlen % 4))[:dlen]
        return bhs, data

    def close(self) -> None:
        self.sock.close()


def _keys(data: bytes) -> dict[str, str]:
    out = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.decode().split("=", 1)
            out[k] = v
    return out


def scsi_write(portal: str, target: str, lun: int, lba: int, block: bytes,
               timeout: float = 10.0) -> ScsiResult:
    """Log in to *target* at *portal* and WRITE(10) one 512-byte *block* at *lba* of *lun*."""
    assert len(block) == 512
    host, port = portal.rsplit(":", 1)
    conn = _Conn(host, int(port), timeout)
    try:
        isid = b"\x80\x00\x51\xb1\x0c\x01"
        itt, cmdsn, exp_statsn = 1, 1, 0
        stages = [(0, 1, {"InitiatorName": INITIATOR, "TargetName": target,
                          "SessionType": "Normal", "AuthMethod": "None"}),
                  (1, 3, {"HeaderDigest": "None", "DataDigest": "None", "ImmediateData": "Yes",
                          "InitialR2T": "No", "MaxRecvDataSegmentLength": "65536",
                          "FirstBurstLength": "65536", "MaxBurstLength": "262144"})]
        negotiated: dict[str, str] = {}
        for csg, nsg, keys in stages:
            data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in keys.items())
            rest = (isid + b"\0\0" + struct.pack(">IHH", itt, 0, 0)
                    + struct.pack(">II", cmdsn, exp_statsn) + b"\0" * 16)
            conn.send(_bhs(0x40 | LOGIN_REQ, 0x80 | (csg << 2) | nsg, len(data), rest), data)
            bhs, rdata = conn.recv()
            if bhs[0] & 0x3F != LOGIN_RSP:
                raise ConnectionError(f"login: unexpected opcode 0x{bhs[0]:02x}")
            if bhs[36] or bhs[37]:
                raise ConnectionError(f"login refused: status class {bhs[36]}, detail {bhs[37]}")
            exp_statsn = struct.unpack(">I", bhs[24:28])[0] + 1
            negotiated.update(_keys(rdata))
        immediate = negotiated.get("ImmediateData", "No") == "Yes"
        # The first command after login gets UNIT ATTENTION (power on/reset): repeat it.
        for _ in range(3):
            itt += 1
            result = _write(conn, itt, cmdsn, exp_statsn, lun, lba, block, immediate)
            cmdsn += 1
            exp_statsn = result[1]
            if result[0].sense_key != 0x6:
                return result[0]
        return result[0]
    finally:
        conn.close()


def _write(conn: _Conn, itt: int, cmdsn: int, exp_statsn: int, lun: int, lba: int, block: bytes,
           immediate: bool) -> tuple[ScsiResult, int]:
    """One WRITE(10); returns the result and the next ExpStatSN."""
    cdb = struct.pack(">BBIBHB", 0x2A, 0, lba, 0, 1, 0).ljust(16, b"\0")
    lun_field = struct.pack(">HHI", lun, 0, 0)
    payload = block if immediate else b""
    rest = lun_field + struct.pack(">IIII", itt, len(block), cmdsn, exp_statsn) + cdb
    conn.send(_bhs(SCSI_CMD, 0x80 | 0x20 | 0x01, len(payload), rest), payload)
    while True:
        bhs, rdata = conn.recv()
        op = bhs[0] & 0x3F
        if op == R2T:
            ttt = bhs[20:24]
            offset, length = struct.unpack(">II", bhs[40:48])
            chunk = block[offset:offset + length]
            rest = (lun_field + struct.pack(">I", itt) + ttt + b"\0" * 4
                    + struct.pack(">I", exp_statsn) + b"\0" * 4
                    + struct.pack(">II", 0, offset) + b"\0" * 4)
            conn.send(_bhs(DATA_OUT, 0x80, len(chunk), rest), chunk)
        elif op == SCSI_RSP:
            next_statsn = struct.unpack(">I", bhs[24:28])[0] + 1
            status = bhs[3]
            if status == 0 or len(rdata) < 2:
                return ScsiResult(status), next_statsn
            sense = rdata[2:2 + struct.unpack(">H", rdata[:2])[0]]
            return ScsiResult(status, sense[2] & 0x0F, sense[12], sense[13]), next_statsn
        elif op == NOP_IN:
            continue
        else:
            raise ConnectionError(f"unexpected PDU 0x{op:02x} from the target")
