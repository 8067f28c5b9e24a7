package cache

// Peek is PeekAt at the cache's own clock: only tests look without a
// request's time at hand.
func (c *Cache[V]) Peek(key Key) (*Entry[V], State) { return c.PeekAt(key, c.now()) }
