// Package jaegerbin pins the Jaeger all-in-one binary (v1.76) that lbpath's
// trace e2e test starts; build it with testbed/jaeger.EnsureBinary.
package jaegerbin
