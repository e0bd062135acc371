// Bodies that are streams: the Web Streams classes (the vendored web-streams-polyfill) and the
// glue that reads, tees and pumps a Request/Response body once it is a ReadableStream. Compiled
// to bytecode by build.rs and loaded with the polyfill, the first time a Worker touches a stream
// global or a body's `.body` (`part("bodies")` in bootstrap.js): an isolate whose Worker only
// ever uses string, byte or null bodies pays nothing for it.
//
// `make` receives the intrinsics the bootstrap captured before any user code ran (this module is
// evaluated later, when globals may have been replaced).

export default function make(h) {
  const {
    host,
    part,
    global: g,
    STREAM_GLOBALS,
    ReflectApply,
    ReflectOwnKeys,
    ObjectDefineProperty,
    ObjectGetOwnPropertyDescriptor,
    ObjectGetPrototypeOf,
    SymbolToStringTag,
    TypeErrorCtor,
    Uint8ArrayCtor,
    Uint8ArraySet,
    ArrayBufferIsView,
    ArrayBufferByteLength,
    ArrayBufferSlice,
    ViewBuffer,
    ViewOffset,
    ViewLength,
    DataViewBuffer,
    DataViewOffset,
    DataViewLength,
    push,
    overLimit,
    isUnusable,
  } = h;

  const ns = host.module("streams");
  const RS = ns.ReadableStream;
  const TS = ns.TransformStream;
  const readerProto = ns.ReadableStreamDefaultReader.prototype;
  /** The polyfill's classes and the methods the glue calls, captured as loaded. */
  const streams = {
    __proto__: null,
    ReadableStream: RS,
    TransformStream: TS,
    locked: ObjectGetOwnPropertyDescriptor(RS.prototype, "locked").get,
    getReader: RS.prototype.getReader,
    tee: RS.prototype.tee,
    cancel: RS.prototype.cancel,
    pipeThrough: RS.prototype.pipeThrough,
    read: readerProto.read,
    cancelReader: readerProto.cancel,
  };

  /** The bytes of a chunk a body stream produced (a BufferSource), as a Uint8Array view. */
  function chunkBytes(chunk, what) {
    if (ArrayBufferIsView(chunk)) {
      try {
        return new Uint8ArrayCtor(ReflectApply(ViewBuffer, chunk, []), ReflectApply(ViewOffset, chunk, []), ReflectApply(ViewLength, chunk, []));
      } catch {
        return new Uint8ArrayCtor(ReflectApply(DataViewBuffer, chunk, []), ReflectApply(DataViewOffset, chunk, []), ReflectApply(DataViewLength, chunk, []));
      }
    }
    try {
      ReflectApply(ArrayBufferByteLength, chunk, []);
      return new Uint8ArrayCtor(chunk);
    } catch {
      throw new TypeErrorCtor(`${what}: a body stream produced a chunk that is not a Uint8Array, ArrayBuffer or view`);
    }
  }

  // The stream globals, with the encoding and compression streams (lazy.js) over the polyfill's
  // TransformStream.
  const classes = { __proto__: null };
  for (const name of STREAM_GLOBALS) classes[name] = ns[name];
  const lazy = part("lazy");
  classes.TextEncoderStream = lazy.textEncoderStream(g, TS);
  classes.TextDecoderStream = lazy.textDecoderStream(g, TS);
  classes.CompressionStream = lazy.compressionStream(TS, host.codec, host.reserve, true, chunkBytes);
  classes.DecompressionStream = lazy.compressionStream(TS, host.codec, host.reserve, false, chunkBytes);
  // WebIDL attributes are enumerable (class accessors are not); instances have a class string.
  for (const ctor of [classes.TextEncoderStream, classes.TextDecoderStream, classes.CompressionStream, classes.DecompressionStream]) {
    ObjectDefineProperty(ctor.prototype, SymbolToStringTag, { __proto__: null, value: ctor.name, configurable: true });
    for (const key of ReflectOwnKeys(ctor.prototype)) {
      const desc = ObjectGetOwnPropertyDescriptor(ctor.prototype, key);
      if (desc.get !== undefined) {
        desc.enumerable = true;
        ObjectDefineProperty(ctor.prototype, key, desc);
      }
    }
  }

  /** A copy of a body chunk of the same type (a clone()'s second branch gets copies). */
  function cloneChunk(chunk) {
    if (ArrayBufferIsView(chunk)) {
      const bytes = chunkBytes(chunk, "clone");
      const copy = ReflectApply(ArrayBufferSlice, ReflectApply(ViewBuffer, bytes, []), [bytes.byteOffset, bytes.byteOffset + bytes.length]);
      const Ctor = ObjectGetPrototypeOf(chunk).constructor;
      const unit = typeof Ctor.BYTES_PER_ELEMENT === "number" ? Ctor.BYTES_PER_ELEMENT : 1;
      return new Ctor(copy, 0, bytes.length / unit);
    }
    try {
      const n = ReflectApply(ArrayBufferByteLength, chunk, []);
      return ReflectApply(ArrayBufferSlice, chunk, [0, n]);
    } catch {
      return chunk;
    }
  }

  /**
   * A body stream read chunk by chunk (`next` until it gives undefined), refused past `limit`
   * bytes: a Worker's streamed Response (pulled by the engine; `cancel` when the client went
   * away) and `readStream`.
   */
  function pump(stream, limit, what) {
    if (isUnusable(stream)) throw new TypeErrorCtor(`${what}: the body has already been used`);
    const reader = ReflectApply(streams.getReader, stream, []);
    let total = 0;
    return {
      __proto__: null,
      next: async () => {
        const step = await ReflectApply(streams.read, reader, []);
        if (step.done) return undefined;
        const bytes = chunkBytes(step.value, what);
        total += bytes.length;
        if (total > limit) {
          const err = overLimit(what, limit);
          ReflectApply(streams.cancelReader, reader, [err]);
          throw err;
        }
        return bytes;
      },
      cancel: async () => {
        await ReflectApply(streams.cancelReader, reader, [new TypeErrorCtor("the client went away")]);
      },
    };
  }

  return {
    __proto__: null,
    streams,
    classes,
    chunkBytes,
    /** Reads a whole stream into one Uint8Array, refusing more than `limit` bytes. */
    async readStream(stream, limit, what) {
      const chunks = pump(stream, limit, what);
      const parts = [];
      let total = 0;
      for (;;) {
        const bytes = await chunks.next();
        if (bytes === undefined) break;
        total += bytes.length;
        push(parts, bytes);
      }
      if (parts.length === 1) return parts[0];
      const out = new Uint8ArrayCtor(total);
      let at = 0;
      for (let i = 0; i < parts.length; i++) {
        ReflectApply(Uint8ArraySet, out, [parts[i], at]);
        at += parts[i].length;
      }
      return out;
    },
    /** A byte stream with one chunk, produced by `read()` on the first pull (never before). */
    byteStream(read) {
      return new RS({
        type: "bytes",
        async pull(controller) {
          const bytes = await read();
          if (bytes.length > 0) controller.enqueue(bytes);
          controller.close();
          const request = controller.byobRequest;
          if (request) request.respond(0);
        },
      });
    },
    /** The stream of a body a consumer already read: disturbed, and locked as after a read. */
    usedStream() {
      const stream = new RS();
      ReflectApply(streams.cancelReader, ReflectApply(streams.getReader, stream, []), []);
      return stream;
    },
    /**
     * The two bodies of a clone(): the standard tees with the second branch's chunks cloned, so
     * that neither reader can change the bytes the other sees.
     */
    cloneBranches(stream) {
      const branches = ReflectApply(streams.tee, stream, []);
      const copy = ReflectApply(streams.pipeThrough, branches[1], [new TS({
        transform(chunk, controller) {
          controller.enqueue(cloneChunk(chunk));
        },
      })]);
      return [branches[0], copy];
    },
    pump,
  };
}
