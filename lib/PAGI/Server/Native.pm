package PAGI::Server::Native;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Scalar::Util ();

# Event kinds, as the first element of every event from drain_events.
use constant {
    EV_REQUEST    => 1,
    EV_BODY       => 2,
    EV_WRITABLE   => 3,
    EV_DISCONNECT => 4,
    EV_DONE       => 5,
    EV_STOPPED    => 6,
    EV_LOG        => 7,
    EV_FATAL      => 8,
    EV_SHUTDOWN   => 9,
    EV_WS_MESSAGE    => 10,
    EV_WS_DISCONNECT => 11,
    EV_GROUP_MESSAGE => 12,
    EV_REPLY         => 13,
};

use Exporter 'import';
our @EXPORT_OK = qw(EV_REQUEST EV_BODY EV_WRITABLE EV_DISCONNECT EV_DONE EV_STOPPED EV_LOG EV_FATAL EV_SHUTDOWN EV_WS_MESSAGE EV_WS_DISCONNECT EV_GROUP_MESSAGE EV_REPLY);
our %EXPORT_TAGS = (events => \@EXPORT_OK);

_load_xs();

# `prove -l t/` puts lib/ first in @INC while the freshly built object sits in
# blib/arch beside it: when the usual search finds nothing, look there too.
sub _load_xs {
    require XSLoader;
    my $error;
    return if eval { XSLoader::load(__PACKAGE__, $VERSION); 1 };
    $error = $@;
    die $error unless $error =~ /Can't locate loadable object/;
    (my $here = $INC{'PAGI/Server/Native.pm'} // __FILE__) =~ s{lib/PAGI/Server/Native\.pm\z}{};
    my $arch = ($here eq '' ? '.' : $here) . '/blib/arch';
    die "PAGI::Server::Native is not built: run 'perl Makefile.PL && make' first\n$error"
        unless -e "$arch/auto/PAGI/Server/Native/Native.so"
            || glob("$arch/auto/PAGI/Server/Native/Native.*");
    local @INC = (@INC, $arch);
    XSLoader::load(__PACKAGE__, $VERSION);
}

sub new {
    my ($class, %options) = @_;
    my $self = $class->_new;
    for my $name (sort keys %options) {
        my $value = $options{$name};
        Carp::croak("PAGI::Server::Native::new: option '$name' is undefined") unless defined $value;
        $self->_set_option($name, "$value");
    }
    return $self;
}

sub http_file {
    my ($self, $id, $file, $offset, $length) = @_;
    my ($path, $fd) = (undef, -1);
    if (ref $file) {
        $fd = fileno($file);
        Carp::croak('PAGI::Server::Native::http_file: fh is not an open file handle') unless defined $fd && $fd >= 0;
    }
    else {
        $path = $file;
        Carp::croak('PAGI::Server::Native::http_file: file path is empty') unless defined $path && length $path;
    }
    return $self->_http_file($id, $path, $fd, $offset // 0, $length // -1);
}

sub listen_fd {
    my ($self, $socket, %opts) = @_;
    my $fd = ref $socket ? fileno($socket) : $socket;
    Carp::croak("PAGI::Server::Native::listen_fd: not a file descriptor or handle")
        unless defined $fd && $fd =~ /\A\d+\z/;
    for (keys %opts) { Carp::croak("PAGI::Server::Native::listen_fd: unknown option '$_'") unless $_ eq 'tls' }
    $self->_listen_fd($fd, $opts{tls} ? 1 : 0);
    return $self;
}

1;

__END__

=head1 NAME

PAGI::Server::Native - the Rust HTTP engine behind PAGI::Server

=head1 SYNOPSIS

A complete hello-world server driving the engine directly from an
IO::Async loop, with no PAGI coroutine per request (the native interface):

    use strict;
    use warnings;
    use IO::Async::Loop;
    use IO::Async::Handle;
    use IO::Socket::IP;
    use PAGI::Server::Native qw(:events);

    my $listener = IO::Socket::IP->new(
        LocalHost => '127.0.0.1', LocalPort => $ENV{PORT} // 5000,
        Listen => 1024, ReuseAddr => 1,
    ) or die "bind: $@";
    print "listening on port ", $listener->sockport, "\n";
    $| = 1;

    my $engine = PAGI::Server::Native->new(timeout => 60);
    $engine->listen_fd($listener);
    $engine->start;

    my $loop = IO::Async::Loop->new;
    open my $wake, '<&', $engine->fd or die "dup: $!";
    $loop->add(IO::Async::Handle->new(
        read_handle   => $wake,
        on_read_ready => sub {
            for my $ev (@{ $engine->drain_events(256) }) {
                next unless $ev->[0] == EV_REQUEST;
                my ($kind, $id, $scope) = @$ev;
                $engine->respond_full($id, 200,
                    [ [ 'content-type', 'text/plain' ] ],
                    "Hello from $scope->{path}\n");
            }
            $engine->flush;
        },
    ));
    $loop->run;

=head1 DESCRIPTION

PAGI::Server::Native is the engine of L<PAGI::Server>: a Rust library
(tokio, httparse) loaded as an XS class. Perl binds the listening sockets
and hands their file descriptors over; the engine accepts, parses and frames
HTTP/1.1 on its own IO thread and reports what happens as events. Perl reads
them in batches with L</drain_events> when the notifier L</fd> becomes
readable, and answers with commands (L</respond_full>, L</http_body>, ...)
that are queued and handed to the IO thread by L</flush>, one wake per
batch. Rust never calls Perl, and no Perl value is touched off the Perl
thread.

Most users want L<PAGI::Server>, which turns these events into the PAGI
C<$scope>, C<$receive> and C<$send> of an application. This page documents
the engine itself, for that layer and for programs that drive it directly.

=head1 METHODS

=head2 new

    my $engine = PAGI::Server::Native->new(%options);

Creates an engine with no thread and no file descriptor yet, so it can be
made before C<fork>. Options (unknown ones croak):

=over 4

=item max_body_size (10_000_000; 0 = unlimited)

=item max_header_size (8192), max_header_count (100), max_request_line_size (8192)

=item timeout (60 s keep-alive idle; 0 = off), header_timeout (30 s for a request head; 0 = off)

=item body_timeout (60 s of client stall while the app waits for body bytes), request_timeout (0 = off)

=item max_connections (0, meaning 1000; beyond it new connections get 503)

=item write_high_watermark (65536), write_low_watermark (16384)

=item server_header (C<PAGI-Server-Native/VERSION>; empty = none)

=item max_ws_frame_size (16 MiB: largest WebSocket message; bigger closes with 1009)

=item ssl_cert_pem, ssl_key_pem, ssl_ca_pem: the PEM text itself; when given, the matching C<ssl_*_file> is never opened and only names the item in messages (PAGI::Server reads the files before privileges are dropped)

=item ssl_cert_file, ssl_key_file (PEM), ssl_ca_file, ssl_verify_client (none, optional, require), ssl_min_version (TLSv1_2, TLSv1_3), ssl_cipher_list (colon-separated rustls suite names such as TLS13_AES_128_GCM_SHA256)

=item ws_ping_interval (20 s; 0 = off), ws_ping_timeout (20 s; 0 = wait forever)

=item group_overflow (C<drop> or C<skip>), group_max_buffered (1 MiB): the slow-member policy of L</GROUPS>

=back

=head2 listen_fd

    $engine->listen_fd($socket_or_fd);
    $engine->listen_fd($socket_or_fd, tls => 1);

Adopts a bound, listening TCP or Unix-domain socket (the engine tells them
apart). The engine keeps its own close-on-exec duplicate, so the caller may
close its handle. Before L</start> only. With C<< tls => 1 >> a TCP
listener speaks TLS (rustls with the ring provider), configured by the
C<ssl_*> options; L</start> croaks naming the file when a certificate or
key cannot be read. Connections on Unix sockets have no C<client> in their
scope and C<server> is C<[path, undef]>; TLS connections have scheme
C<https>/C<wss> and C<< $scope->{extensions}{tls} >> (PAGI-SPEC 4;
C<client_cert_error> is always undef: a client certificate that fails
verification fails the handshake).

=head2 start

Creates the notifier, the tokio runtime and the IO thread, and starts
accepting. Call it in the process that will serve (after any C<fork>); from
then on every call from another process croaks, except C<DESTROY>, which
does nothing there.

=head2 fd

The notifier file descriptor: readable while events wait. Watch a C<dup>
of it (C<< open my $fh, '<&', $engine->fd >>); L</drain_events> reads it.

=head2 drain_events

    my $events = $engine->drain_events($max);   # $max defaults to 256

Returns an array reference of up to C<$max> events and re-arms the
notifier if more remain, so no wake is lost. Each event is an array
reference whose first element is its kind (the C<EV_*> constants, exported
with C<:events>) and whose second is the request id (0 for engine-wide
events):

    [EV_REQUEST,    $id, $scope, $body]  # $body: the whole body, or undef to pull it
    [EV_BODY,       $id, $bytes, $more]  # answer to want_body
    [EV_WRITABLE,   $id]                 # buffer fell below the low watermark
    [EV_DONE,       $id, $at]            # response completely written, at $at (epoch seconds)
    [EV_DISCONNECT, $id, $reason]        # ended abnormally (client_closed, ...)
    [EV_STOPPED,    0]                   # shutdown finished; the IO thread is gone
    [EV_LOG,        0, $level, $message]
    [EV_FATAL,      0, $message]         # the IO thread died
    [EV_SHUTDOWN,   $id]                 # graceful shutdown began; the response may finish
    [EV_WS_MESSAGE, $id, $data, $is_text] # a WebSocket message (text decoded to characters)
    [EV_WS_DISCONNECT, $id, $code, $reason] # the WebSocket ended
    [EV_GROUP_MESSAGE, 0, \%message]    # for a group Perl subscribed to (see GROUPS)
    [EV_REPLY,      $token, $ok, $value] # answer to a publish or query; $value is the error when !$ok

For a WebSocket handshake C<$scope> is a C<websocket> scope (no method,
scheme C<ws>); answer it with L</ws_accept> or refuse it. Otherwise
C<$scope> is a PAGI http scope (type, pagi, http_version, method, scheme,
path, raw_path, query_string, root_path, headers, client, server). Every
request gets exactly one of C<EV_DONE> or C<EV_DISCONNECT>; ids are never
reused. C<EV_DONE> does not wake the notifier by itself: it comes with the
next wake, at most about a millisecond later (under load, with the next
request), and C<$at> says when the response was actually complete.

=head2 respond_full

    $engine->respond_full($id, $status, \@headers, $body);

Answers a request with a complete response (Content-Length framing).

=head2 http_start

    $engine->http_start($id, $status, \@headers, $trailers);

Starts a streamed response. It is written together with the first body
chunk: chunked unless the headers carry a Content-Length (close-delimited
for HTTP/1.0).

=head2 http_body

    my $buffered = $engine->http_body($id, $bytes, $more);

Queues a body chunk; C<$more> false ends the body (or, with trailers
declared, waits for L</http_trailers>). Returns the response bytes now
buffered for the connection, or -1 if the request is gone. At or above the
high watermark call L</wait_writable> and wait for C<EV_WRITABLE>.

=head2 http_file

    $engine->http_file($id, $path_or_fh, $offset, $length);

Sends C<$length> bytes (default: to the end) of a regular file from
C<$offset> as the rest of the body, with sendfile(2): the bytes never pass
through Perl. A path is opened at once (croaks if it cannot be); a handle
is duplicated, so the caller may close it afterwards. Completes the body.

=head2 http_trailers

    $engine->http_trailers($id, \@headers);

Ends a response that declared trailers. They reach the wire when the
response is chunked and the client sent C<TE: trailers>.

=head2 ws_accept

    $engine->ws_accept($id, $subprotocol_or_undef, \@headers);

Answers a WebSocket handshake with 101. The engine never agrees to an
extension: permessage-deflate offers are declined by leaving the header
out. The engine then reads up to 16 messages ahead of the app; each
L</ws_credit> allows more.

=head2 ws_send_text, ws_send_bytes

    my $buffered = $engine->ws_send_text($id, $characters);   # sent UTF-8 encoded
    my $buffered = $engine->ws_send_bytes($id, $bytes);

Like L</http_body>: returns the bytes buffered, -1 if the connection is gone.

=head2 ws_close

    $engine->ws_close($id, $code, $reason);

Closes with a code a server may send. Before L</ws_accept> it refuses the
handshake with a bare 403.

=head2 ws_credit

    $engine->ws_credit($id, $n);

Lets the engine read C<$n> more messages.

=head2 ws_keepalive

    $engine->ws_keepalive($id, $interval, $timeout);

Pings every C<$interval> seconds (0 stops); with a C<$timeout>, a peer that
does not answer is dropped (C<EV_WS_DISCONNECT> 1006, C<keepalive_timeout>).

=head2 want_body

Asks for the next request-body chunk; it arrives as C<EV_BODY>. The engine
reads request bodies only on demand (and sends C<100 Continue> then, if the
client expects it).

=head2 abort

Closes the request's connection once what is queued is written.

=head2 wait_writable

    my $must_wait = $engine->wait_writable($id);

Registers interest in C<EV_WRITABLE>. False means the buffer already
drained meanwhile and no event will come.

=head2 flush

Hands the queued commands to the IO thread with a single wake. Commands
reach the wire only after a flush.

=head2 shutdown

    $engine->shutdown($grace_seconds);

Stops accepting, lets requests in flight finish for up to C<$grace>
seconds, closes the rest and ends with C<EV_STOPPED>.

=head2 stats

    my $s = $engine->stats;       # connections_active, connections_total,
                                  # requests_total, requests_active, events_pending
    my $r = $engine->stats($id);  # bytes_read, buffered (undef once the request ended)

=head2 check_tls

    $engine->check_tls;

Builds the TLS configuration from the C<ssl_*> options without starting
anything; croaks naming the file when a certificate or key is missing,
unreadable, not PEM or mismatched.

=head2 build_info

    print PAGI::Server::Native->build_info;   # pagi-server-native 0.1.0; tokio 1.x, ...

The engine's crate version and the versions of its main dependencies.

=head2 write_watermarks

    my ($high, $low) = $engine->write_watermarks;

=head1 GROUPS

Named groups of WebSocket connections (after L</ws_accept>) and SSE
streams (after C<sse_start>). A publish is encoded once per protocol (a
WebSocket text or binary frame; an SSE event) and the one buffer is
queued for every member by the IO thread. L<PAGI::Server::Groups> is the
interface apps use; these are its engine calls.

    $engine->group_join($id, $group, $is_sse);    # 1, or 0 if the request is gone
    $engine->group_leave($id, $group);
    my $token = $engine->group_publish($group, $is_text, $data, $event, $event_id, $retry, $exclude_id);
    $engine->group_subscribe($group, $on);        # Perl wants EV_GROUP_MESSAGE for $group
    my $n = $engine->group_count($group);         # local members (no round trip)
    my $token = $engine->query_cluster_count($group);
    my $token = $engine->query_redis(@args);      # fails without the redis backend
    my $s = $engine->group_stats;  # published delivered delivered_direct skipped dropped redis_publish_failed redis_reconnects redis_connected

A publish is answered by C<EV_REPLY> with its token and the number of
members it was queued for; queries likewise. Group names are 1 to 256
bytes (UTF-8 encoded) without NUL. A member leaves every group when its
request ends. A member whose connection has more than
C<group_max_buffered> bytes unwritten gets no message: with
C<< group_overflow => 'drop' >> (the default) it is closed (a WebSocket
ends with C<EV_WS_DISCONNECT> 1008 C<too slow for group messages>, an SSE
stream with C<EV_DISCONNECT> C<queue_overflow>) and C<dropped> counts it;
with C<skip> the message is left out for it and C<skipped> counts it.

C<EV_GROUP_MESSAGE> carries C<< { group, text | bytes, event, id, retry, node } >>
(C<node> undef for messages published by this process).

=head1 RETURN VALUES AND ERRORS

Request commands return 1 when queued and 0 when the request already ended
(a silent no-op, as PAGI asks of C<$send> after a disconnect). Invalid
arguments croak with the method's name and the problem, for example
C<PAGI::Server::Native::http_start: Invalid header value: contains CR, LF,
or null byte (header 'x-bad')>; nothing is queued then. A panic inside Rust
is caught at the boundary and croaks the same way; a panic on the IO thread
arrives as C<EV_FATAL>.

=head1 SEE ALSO

L<PAGI::Server>, L<pagi-server>.

=cut
