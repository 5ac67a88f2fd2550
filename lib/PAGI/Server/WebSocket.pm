package PAGI::Server::WebSocket;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Server::Scope';

use Future;
use Scalar::Util qw(blessed);

=head1 NAME

PAGI::Server::WebSocket - one websocket scope: PAGI events to engine commands

=head1 DESCRIPTION

Internal to L<PAGI::Server>, the WebSocket twin of L<PAGI::Server::HTTP>.
The engine does the framing (tungstenite: masking, fragmentation, UTF-8,
ping/pong, close codes); this object turns C<websocket.*> events into
engine commands and engine events into what C<$receive> returns
(PAGI-SPEC 3.2).

States: 0 handshake pending, 1 accepted, 2 closed, 3 denying (an HTTP
response instead of the handshake).

=head2 Flow control and memory bounds

Inbound messages reach this object only as fast as the app takes them: at
most 16 messages, and at most 1 MiB of them (one message is always
allowed, however large), are delivered and not yet taken; each message
C<$receive> hands to the app returns one credit, and the engine releases
the sizes it delivered oldest first. Beyond that window the engine holds
up to 256 KiB (or 1024 messages) while it keeps reading, so pings, pongs
and a Close are read and answered while the app is behind; then it stops
reading and the client meets TCP backpressure. Time spent not reading
because of that backpressure never counts against a pong.

So one connection holds at most about 1.25 MiB of inbound messages plus
the one message that crossed the limit (at most C<max_ws_frame_size>,
16 MiB by default) plus about 80 KiB of read buffers: about 17.3 MiB with
the defaults, about 1.3 MiB when messages are small.

Outbound, C<websocket.send> waits while more than C<write_high_watermark>
bytes are queued. Every write runs in the engine's per-connection select
with commands and timers: a client that reads nothing for C<timeout>
seconds (the write stall timer, 0 = off) is dropped with
C<websocket.disconnect> 1006 C<write_timeout>, and at shutdown the app is
told first (1001 C<server_shutdown>), the client gets a Close 1001, and
the connection is closed within a second, or at once when the grace ends,
whether or not the client reads.

=cut

my $DONE = $PAGI::Server::Scope::DONE;
*_fail         = \&PAGI::Server::Scope::_fail;
*_engine_error = \&PAGI::Server::Scope::_engine_error;

sub new {
    my ($class, $server, $id, $scope) = @_;
    my @offered = map { split /,/ } map { $_->[1] } grep { $_->[0] eq 'sec-websocket-protocol' } @{ $scope->{headers} };
    $scope->{subprotocols} = [ grep { length } map { s/\A\s+|\s+\z//gr } @offered ];
    $scope->{extensions}{'websocket.http.response'} = {};
    return bless {
        server => $server,
        engine => $server->{engine},
        id     => $id,
        scope  => $scope,
        queue  => [ { type => 'websocket.connect' } ],
        state  => 0,
    }, $class;
}

=head1 METHODS

=head2 receive

C<websocket.connect> first, then C<websocket.receive> messages (C<text> as
characters, C<bytes> as bytes), then C<websocket.disconnect> with C<code>
and C<reason>.

=cut

sub receive {
    my ($self) = @_;
    return Future->done($self->_take) if @{ $self->{queue} };
    return Future->done({ %{ $self->{gone} } }) if $self->{gone};
    # _new_future, without its call: this is every message of an echo loop.
    return $self->{receive_f} //= ($self->{server}{future_class} || $self->{server}->_future_class)->new;
}

# Hands the next queued event to the app; a message taken earns the engine
# one more message of credit.
sub _take {
    my ($self) = @_;
    my $event = shift @{ $self->{queue} };
    if ($event->{type} eq 'websocket.receive' && !$self->{gone}) {
        $self->{engine}->ws_credit($self->{id}, 1);
        # Inside a drain the flush at its end sends the credit.
        $self->{server}->_flush_soon unless $PAGI::Server::IN_DRAIN;
    }
    return $event;
}

=head2 send

Accepts C<websocket.accept>, C<websocket.send>, C<websocket.close>,
C<websocket.keepalive> and the denial extension
C<websocket.http.response.start> / C<websocket.http.response.body>.

=cut

my %SEND_METHOD = (
    'websocket.send'                => '_send_message',
    'websocket.accept'              => '_accept',
    'websocket.close'               => '_close',
    'websocket.keepalive'           => '_keepalive',
    'websocket.http.response.start' => '_deny_start',
    'websocket.http.response.body'  => '_deny_body',
    'groups.join'                   => '_groups',
    'groups.leave'                  => '_groups',
    'groups.publish'                => '_groups',
);

sub send {
    my ($self, $event) = @_;
    my ($type, $failed) = PAGI::Server::Scope::_event_type($event);
    return $failed if $failed;
    my $method = $SEND_METHOD{$type}
        or return _fail("Unrecognized event type '$type' for websocket protocol");
    return $self->$method($event);
}

# The groups extension (PAGI::Server::Groups).
sub _groups {
    my ($self, $event) = @_;
    return PAGI::Server::Groups::_scope_event($self, $event, $event->{type}, 'websocket');
}

sub _accept {
    my ($self, $event) = @_;
    my $subprotocol = $event->{subprotocol};
    return _fail("websocket.accept: 'subprotocol' must be a token")
        if defined $subprotocol && (ref $subprotocol || $subprotocol !~ /\A[\w\-.!#\$%&'*+^`|~]+\z/);
    my $headers = $event->{headers};
    return _fail("websocket.accept: 'headers' must be an array reference")
        if defined $headers && ref $headers ne 'ARRAY';
    return $DONE if $self->{gone};
    return _fail('websocket.accept: the handshake was already answered') if $self->{state};
    my $ok = eval { $self->{engine}->ws_accept($self->{id}, $subprotocol, $headers // []); 1 };
    return _engine_error('websocket.accept', $@) unless $ok;
    $self->{state}  = 1;
    $self->{status} = 101;
    $self->{server}->_flush_soon;
    return $DONE;
}

sub _send_message {
    my ($self, $event) = @_;
    my ($text, $bytes) = @$event{qw(text bytes)};
    return _fail("websocket.send: exactly one of 'text' and 'bytes' is required")
        if defined $text == defined $bytes;
    return _fail("websocket.send: '" . (defined $text ? 'text' : 'bytes') . "' must be a string, not a reference")
        if ref($text // $bytes);
    return $DONE if $self->{gone} || $self->{state} == 2;
    return _fail('websocket.send: sent before websocket.accept') unless $self->{state} == 1;
    my $engine = $self->{engine};
    my $buffered = defined $text
        ? eval { $engine->ws_send_text($self->{id}, $text) }
        : eval { $engine->ws_send_bytes($self->{id}, $bytes) };
    return _engine_error('websocket.send', $@) unless defined $buffered;
    return $self->_after_send($buffered);
}

sub _close {
    my ($self, $event) = @_;
    my $code = $event->{code} // 1000;
    my $reason = $event->{reason} // '';
    return _fail("websocket.close: 'code' must be an integer") if ref $code || $code !~ /\A\d+\z/;
    return _fail("websocket.close: 'reason' must be a string") if ref $reason;
    return $DONE if $self->{gone} || $self->{state} == 2;
    return _fail('websocket.close: a denial response is in progress') if $self->{state} == 3;
    my $ok = eval { $self->{engine}->ws_close($self->{id}, $code, $reason); 1 };
    return _engine_error('websocket.close', $@) unless $ok;
    $self->{status} //= 403;
    $self->{state} = 2;
    $self->{server}->_flush_soon;
    return $DONE;
}

sub _keepalive {
    my ($self, $event) = @_;
    my ($interval, $timeout) = @$event{qw(interval timeout)};
    for ([ interval => $interval ], [ timeout => $timeout ]) {
        my ($name, $v) = @$_;
        next if !defined $v && $name eq 'timeout';
        return _fail("websocket.keepalive: '$name' must be a non-negative number")
            unless defined $v && !ref $v && $v =~ /\A(?:\d+(?:\.\d*)?|\.\d+)\z/;
    }
    return $DONE if $self->{gone} || $self->{state} != 1;    # [ref] ignored before accept
    my $ok = eval { $self->{engine}->ws_keepalive($self->{id}, $interval, $timeout // 0); 1 };
    return _engine_error('websocket.keepalive', $@) unless $ok;
    $self->{server}->_flush_soon;
    return $DONE;
}

sub _deny_start {
    my ($self, $event) = @_;
    my $status = $event->{status} // 403;
    return _fail("websocket.http.response.start: 'status' must be an integer from 100 to 999")
        unless !ref $status && $status =~ /\A[1-9][0-9][0-9]\z/;
    my $headers = $event->{headers};
    return _fail("websocket.http.response.start: 'headers' must be an array reference")
        if defined $headers && ref $headers ne 'ARRAY';
    return $DONE if $self->{gone} || $self->{state} == 1 || $self->{state} == 2;   # ignored after accept
    return _fail('websocket.http.response.start: the denial response was already started') if $self->{state} == 3;
    my $ok = eval { $self->{engine}->http_start($self->{id}, $status, $headers // [], 0); 1 };
    return _engine_error('websocket.http.response.start', $@) unless $ok;
    $self->{state}  = 3;
    $self->{status} = $status;
    $self->{server}->_flush_soon;
    return $DONE;
}

sub _deny_body {
    my ($self, $event) = @_;
    my $body = $event->{body} // '';
    return _fail("websocket.http.response.body: 'body' must be a byte string") if ref $body;
    return $DONE if $self->{gone} || $self->{state} == 1 || $self->{state} == 2;
    return _fail('websocket.http.response.body: sent before websocket.http.response.start') unless $self->{state} == 3;
    # The denial goes out in one piece with a Content-Length (PAGI-SPEC 3.2.2).
    $self->{denial_body} .= $body;
    return $DONE if $event->{more};
    my $whole = delete $self->{denial_body};
    my $ok = eval { $self->{engine}->http_body($self->{id}, $whole, 0); 1 };
    return _engine_error('websocket.http.response.body', $@) unless $ok;
    $self->{bytes_sent} += length $whole;
    $self->{state} = 2;
    $self->{server}->_flush_soon;
    return $DONE;
}

=head2 app_finished

The server's part when the app's Future is ready: an exception before the
handshake was answered gives HTTP 500; after accept, close code 1011. An
app that returns leaves nothing open: a pending handshake is refused (403),
an open connection closed with 1000, a denial response finished.

=cut

sub app_finished {
    my ($self, $f) = @_;
    my $engine = $self->{engine};
    my $failed = blessed $f && ($f->is_failed || $f->is_cancelled);
    if ($failed) {
        my $error = $f->is_failed ? ($f->failure)[0] : 'app future was cancelled';
        $error =~ s/\s+\z//;
        $self->{server}->_log(error => "PAGI application error: $error (websocket $self->{scope}{path})");
    }
    unless ($self->{gone}) {
        if ($self->{state} == 0 && $failed) {
            $self->{status} = 500;
            $engine->respond_full($self->{id}, 500, [ [ 'content-type', 'text/plain' ], [ 'connection', 'close' ] ], "Internal Server Error\n");
            $engine->abort($self->{id});
        }
        elsif ($self->{state} == 0) {
            $self->{status} = 403;
            $engine->ws_close($self->{id}, 1000, '');
        }
        elsif ($self->{state} == 1) {
            $engine->ws_close($self->{id}, $failed ? 1011 : 1000, '');
        }
        elsif ($self->{state} == 3) {
            $engine->http_body($self->{id}, delete $self->{denial_body} // '', 0);
        }
        $self->{state} = 2;
        $self->{server}->_flush_soon;
    }
    $self->{app_done} = 1;
    delete $self->{scope} if $self->{ended};
}

# An app callback died while an event for this connection was dispatched:
# ended as after an app exception (500 before the handshake, 1011 after).
sub _callback_died {
    my ($self) = @_;
    return if $self->{gone} || $self->{state} == 2;
    my $engine = $self->{engine};
    if ($self->{state} == 0) {
        $self->{status} = 500;
        $engine->respond_full($self->{id}, 500, [ [ 'content-type', 'text/plain' ], [ 'connection', 'close' ] ], "Internal Server Error\n");
        $engine->abort($self->{id});
    }
    elsif ($self->{state} == 1) {
        $engine->ws_close($self->{id}, 1011, '');
    }
    else {
        $engine->abort($self->{id});
    }
    $self->{state} = 2;
    $self->{server}->_flush_soon;
}

# Engine events (called by PAGI::Server).

sub _ev_message {
    my ($self, $data, $is_text) = @_;
    my $event = { type => 'websocket.receive', ($is_text ? (text => $data) : (bytes => $data)) };
    # An app waiting in $receive has taken everything queued before: the
    # message goes to it directly (what _take would do, without the queue).
    if (my $f = delete $self->{receive_f}) {
        $self->{engine}->ws_credit($self->{id}, 1) unless $self->{gone};
        return $f->done($event);
    }
    push @{ $self->{queue} }, $event;
}

sub _ev_ws_disconnect {
    my ($self, $code, $reason) = @_;
    $self->_gone({ type => 'websocket.disconnect', code => $code, reason => $reason });
}

# Before the handshake completed: the client left (1006) or the engine
# aborted. A finished denial response (EV_DONE) ends the scope the same way.
sub _ev_disconnect {
    my ($self, $reason) = @_;
    $self->_gone({ type => 'websocket.disconnect', code => 1006, reason => $reason // 'client_closed' });
}

sub _ev_done {
    my ($self) = @_;
    $self->_gone({ type => 'websocket.disconnect', code => 1006, reason => '' });
}

sub _gone {
    my ($self, $event) = @_;
    return if $self->{gone};
    $self->{gone} = $event;
    $self->{state} = 2;
    if (my $f = delete $self->{receive_f}) {
        $f->done(@{ $self->{queue} } ? $self->_take : { %$event });
    }
    $self->_ev_writable;
}

sub _ev_shutdown { }

sub _ended {
    my ($self) = @_;
    $self->{ended} = 1;
    delete $self->{scope} if $self->{app_done};
}

1;
