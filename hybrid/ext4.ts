// ext2/3/4 superblock recognition, our own parser: the superblock sits at byte 1024 of the
// partition; its magic 0xEF53 is at offset 56 (so byte 1080 of the device). We only need to tell
// "ext4 worth mounting" from everything else (FAT boot partitions of SD cards, swap, raw disks).

export const SUPERBLOCK_OFFSET = 1024;
export const SUPERBLOCK_SIZE = 1024;
const EXT_MAGIC = 0xef53;
// s_feature_incompat bits that only ext4 sets (extents, 64bit, flex_bg).
const INCOMPAT_EXTENTS = 0x40, INCOMPAT_64BIT = 0x80, INCOMPAT_FLEX_BG = 0x200;
const COMPAT_HAS_JOURNAL = 0x4;

export interface ExtSuperblock {
  kind: "ext2" | "ext3" | "ext4";
  label: string;
  uuid: string;
  blockSize: number;
  blocks: number;
  freeBlocks: number;
  /** true when the journal needs replay (the node lost power while mounted) */
  needsRecovery: boolean;
}

/** Parses the superblock from the first ≥ 2048 bytes of a block device; undefined if not ext. */
export function parseExtSuperblock(head: Uint8Array): ExtSuperblock | undefined {
  if (head.length < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) return undefined;
  const v = new DataView(head.buffer, head.byteOffset + SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE);
  if (v.getUint16(56, true) !== EXT_MAGIC) return undefined;
  const logBlock = v.getUint32(24, true);
  if (logBlock > 6) return undefined; // block size > 64 KiB: not a sane superblock
  const compat = v.getUint32(92, true), incompat = v.getUint32(96, true);
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  const blocks = v.getUint32(4, true) + (is64 ? v.getUint32(0x150, true) * 2 ** 32 : 0);
  const freeBlocks = v.getUint32(12, true) + (is64 ? v.getUint32(0x158, true) * 2 ** 32 : 0);
  const label = new TextDecoder().decode(
    head.subarray(SUPERBLOCK_OFFSET + 120, SUPERBLOCK_OFFSET + 136),
  )
    .replace(/\0.*$/s, "");
  const u = Array.from(
    head.subarray(SUPERBLOCK_OFFSET + 104, SUPERBLOCK_OFFSET + 120),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  const uuid = `${u.slice(0, 8)}-${u.slice(8, 12)}-${u.slice(12, 16)}-${u.slice(16, 20)}-${
    u.slice(20)
  }`;
  const kind = incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG)
    ? "ext4"
    : compat & COMPAT_HAS_JOURNAL
    ? "ext3"
    : "ext2";
  return {
    kind,
    label,
    uuid,
    blockSize: 1024 << logBlock,
    blocks,
    freeBlocks,
    needsRecovery: (incompat & 0x4) !== 0,
  };
}
