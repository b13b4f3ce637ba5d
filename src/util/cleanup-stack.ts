/**
 * Owns resources in creation order and releases them once, in reverse. Node 20 has no
 * AsyncDisposableStack, so this is the small equivalent the style guide asks for.
 */
export class CleanupStack implements AsyncDisposable {
  readonly #steps: Array<{ name: string; run: () => unknown }> = [];
  #disposed = false;

  /** Registers a cleanup step; it runs once, after every step registered later. */
  defer(name: string, run: () => unknown): void {
    if (this.#disposed) {
      void Promise.resolve().then(run).catch(() => {});
      return;
    }
    this.#steps.push({ name, run });
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Runs every step in reverse order; a failing step does not stop the others. Returns their errors. */
  async dispose(): Promise<Error[]> {
    if (this.#disposed) return [];
    this.#disposed = true;
    const errors: Error[] = [];
    while (this.#steps.length > 0) {
      const step = this.#steps.pop()!;
      try {
        await step.run();
      } catch (error) {
        errors.push(new Error(`cleanup ${step.name} failed`, { cause: error }));
      }
    }
    return errors;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
