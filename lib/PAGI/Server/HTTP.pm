package PAGI::Server::HTTP;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Server::Scope';

use Future;
use Scalar::Util qw(blessed openhandle);
use PAGI::Server::Validate;

=head1 NAME

PAGI::Server::HTTP - one http scope: PAGI events to engine commands

=head1 DESCRIPTION

Internal to L<PAGI::Server>. An object per request holds its state; the
C<$receive> and C<$send> closures given to the app call L</receive> and
L</send>. This is the only place where PAGI http event hashes become engine
commands, and where their order and fields are checked: a bad event fails
its C<$send> Future with a message naming the problem, and nothing reaches
the wire.

Response states: 0 nothing sent, 1 started, 2 complete.

=cut

my $DONE = $PAGI::Server::Scope::DONE;
my $DISCONNECT = { type => 'http.disconnect' };

sub new {
    my ($class, $server, $id, $scope, $body) = @_;
    return bless {
        server => $server,
        engine => $server->{engine},
        id     => $id,
        scope  => $scope,
        body   => $body,      # the whole body when the engine sent it along
        state  => 0,
    }, $class;
}

*_fail         = \&PAGI::Server::Scope::_fail;
*_engine_error = \&PAGI::Server::Scope::_engine_error;

=head1 METHODS

=head2 receive

Returns a Future of the next inbound event: C<http.request> chunks, then
C<http.disconnect> once the response is complete or the client is gone.

=cut

sub receive {
    my ($self) = @_;
    if (defined(my $body = delete $self->{body})) {
        $self->{body_done} = 1;
        return Future->done({ type => 'http.request', body => $body, more => 0 });
    }
    return Future->done({%$DISCONNECT}) if $self->{gone} || ($self->{body_done} && $self->{complete});
    return Future->done({ %$DISCONNECT, reason => 'server_shutdown' }) if $self->{body_done} && $self->{shutting_down};
    return $self->{receive_f} if $self->{receive_f};
    # Loop futures, so that even a blocking ->get in an app works.
    my $f = $self->{receive_f} = $self->_new_future;
    unless ($self->{body_done}) {
        $self->{engine}->want_body($self->{id});
        $self->{server}->_flush_soon;
    }
    return $f;
}

=head2 send

Takes one PAGI send event; returns a Future done when the event was
accepted, pending while the response buffer is above the high watermark.

=cut

sub send {
    my ($self, $event) = @_;
    my ($type, $failed) = PAGI::Server::Scope::_event_type($event);
    return $failed if $failed;
    if ($self->{server}{validate_events}) {
        my $problem = PAGI::Server::Validate->http_event($event);
        return _fail($problem) if defined $problem;
    }
    if ($type eq 'http.response.body') {
        return $self->_body($event);
    }
    elsif ($type eq 'http.response.start') {
        return $self->_start($event);
    }
    elsif ($type eq 'http.response.trailers') {
        return $self->_trailers($event);
    }
    elsif ($type eq 'http.fullflush' && $self->{scope}{extensions}{fullflush}) {
        # Every batch is written as soon as it is flushed and TCP_NODELAY is on,
        # so forcing bytes out means flushing the command queue now.
        $self->{engine}->flush;
        return $DONE;
    }
    elsif ($type eq 'groups.publish') {
        return PAGI::Server::Groups::_scope_event($self, $event, $type, 'http');
    }
    return _fail("Unrecognized event type '$type' for http protocol");
}

sub _start {
    my ($self, $event) = @_;
    my $status = $event->{status};
    return _fail("http.response.start: 'status' is required") unless defined $status;
    return _fail("http.response.start: 'status' must be an integer from 100 to 999, got '$status'")
        unless !ref $status && $status =~ /\A[1-9][0-9][0-9]\z/;
    my $headers = $event->{headers};
    return _fail("http.response.start: 'headers' must be an array reference")
        if defined $headers && ref $headers ne 'ARRAY';
    return $DONE if $self->{gone};
    return _fail('http.response.start: the response was already started') if $self->{state};
    my $trailers = $event->{trailers} ? 1 : 0;
    my $ok = eval { $self->{engine}->http_start($self->{id}, $status, $headers // [], $trailers); 1 };
    return _engine_error('http.response.start', $@) unless $ok;
    $self->{state}    = 1;
    $self->{status}   = $status;
    $self->{trailers} = $trailers;
    return $DONE;
}

sub _body {
    my ($self, $event) = @_;
    return $self->_file_body($event) if defined $event->{file} || defined $event->{fh};
    my $body = $event->{body};
    return _fail("http.response.body: 'body' must be a byte string")
        if ref $body;
    return $DONE if $self->{gone};
    return _fail('http.response.body: sent before http.response.start') unless $self->{state};
    return _fail('http.response.body: the response is already complete')
        if $self->{state} == 2 || $self->{body_ended} || $self->{streaming};
    my $more = $event->{more} ? 1 : 0;
    my $engine = $self->{engine};
    my $buffered = eval { $engine->http_body($self->{id}, $body // '', $more) };
    return _engine_error('http.response.body', $@) unless defined $buffered;
    $self->{bytes_sent} += length($body // '');
    unless ($more) {
        if   ($self->{trailers}) { $self->{body_ended} = 1 }
        else                     { $self->{state} = 2 }
        # A final body never waits for drain: the response is over, and its
        # bytes are bounded by what the app already held (DESIGN 4).
        $self->{server}->_flush_soon;
        return $DONE;
    }
    return $self->_after_send($buffered, length($body // ''));
}

# `file` / `fh` bodies complete the response. A regular file goes to the
# engine, which sends it with sendfile(2): its bytes never pass through
# Perl. Any other handle the reference accepts (in-memory, tied, a pipe, a
# path to a FIFO or device) is read here and streamed in chunks.
sub _file_body {
    my ($self, $event) = @_;
    my ($file, $fh) = @$event{qw(file fh)};
    return _fail("http.response.body: 'body', 'file' and 'fh' are mutually exclusive")
        if (defined $file) + (defined $fh) + (defined $event->{body} && length $event->{body}) > 1;
    for my $field (qw(offset length)) {
        my $v = $event->{$field};
        return _fail("http.response.body: '$field' must be a non-negative integer")
            if defined $v && (ref $v || $v !~ /\A\d+\z/);
    }
    return _fail("http.response.body: 'file' must be a path") if defined $file && ref $file;
    return _fail("http.response.body: 'fh' must be an open filehandle")
        if defined $fh && !(ref $fh && openhandle($fh));
    return $DONE if $self->{gone};
    return _fail('http.response.body: sent before http.response.start') unless $self->{state};
    return _fail('http.response.body: the response is already complete')
        if $self->{state} == 2 || $self->{body_ended} || $self->{streaming};
    my ($offset, $length) = ($event->{offset} // 0, $event->{length});
    if (defined $fh ? !_is_regular_file($fh) : (-p $file || -c _)) {
        my $handle = $fh;
        if (!defined $handle) {
            open $handle, '<:raw', $file
                or return _fail("http.response.body: cannot open '$file': $!");
        }
        return $self->_stream_handle($handle, $offset, $length);
    }
    my $ok = eval { $self->{engine}->http_file($self->{id}, $file // $fh, $offset, $length); 1 };
    return _engine_error('http.response.body', $@) unless $ok;
    my $size = defined $file ? -s $file : -s $fh;
    my $available = ($size // 0) > $offset ? $size - $offset : 0;
    $self->{bytes_sent} += defined $length && $length < $available ? $length : $available;
    $self->_body_complete;
    $self->{server}->_flush_soon;
    return $DONE;
}

# sendfile needs a real descriptor on a regular file: not an in-memory
# handle (fileno -1), not a tied one (its FILENO, if any, is its own affair).
sub _is_regular_file {
    my ($fh) = @_;
    return 0 if (Scalar::Util::reftype($fh) // '') eq 'GLOB' && tied *$fh;
    my $fd = eval { fileno $fh };
    return defined $fd && $fd >= 0 && -f $fh ? 1 : 0;
}

sub _body_complete {
    my ($self) = @_;
    if   ($self->{trailers}) { $self->{body_ended} = 1 }
    else                     { $self->{state} = 2 }
}

my $STREAM_CHUNK = 65536;

# Streams a handle read in Perl: chunks of 64 KiB, each waiting for the
# write buffer to fall below the low watermark once it reached the high
# one, so a slow client holds at most about a watermark of it in memory.
# The returned Future is done once the last byte was queued (the app may
# then close the handle) or the client left; it fails when the handle
# cannot be read, and the connection is cut.
sub _stream_handle {
    my ($self, $fh, $offset, $length) = @_;
    if ($offset) {
        # seek when the handle can (in-memory, files); else read past.
        my $sought = eval { seek $fh, $offset, 0 };
        unless ($sought) {
            my $skip = $offset;
            while ($skip > 0) {
                my $discard = '';
                my $n = eval { read $fh, $discard, $skip < $STREAM_CHUNK ? $skip : $STREAM_CHUNK };
                return $self->_stream_failed(undef, $@ || $!) unless defined $n;
                last unless $n;
                $skip -= $n;
            }
        }
    }
    $self->{streaming} = 1;
    my $done = $self->_new_future;
    $self->_stream_chunks($fh, $length, $done);
    return $done;
}

sub _stream_chunks {
    my ($self, $fh, $left, $done) = @_;
    my ($engine, $id) = @$self{qw(engine id)};
    while (1) {
        if (defined $self->{gone} || $self->{aborted}) {
            delete $self->{streaming};
            $done->done unless $done->is_ready;
            return;
        }
        my $want = defined $left && $left < $STREAM_CHUNK ? $left : $STREAM_CHUNK;
        my $chunk = '';
        my $n = $want ? eval { read $fh, $chunk, $want } : 0;
        return $self->_stream_failed($done, $@ || "$!") unless defined $n;
        $left -= $n if defined $left;
        my $last = !$n || (defined $left && !$left);
        my $buffered = eval { $engine->http_body($id, $chunk, $last ? 0 : 1) };
        unless (defined $buffered) {
            my $failed = _engine_error('http.response.body', $@);
            return $self->_stream_failed($done, ($failed->failure)[0], 1);
        }
        $self->{bytes_sent} += $n;
        $self->{stream_started} = 1;
        if ($last) {
            delete $self->{streaming};
            $self->_body_complete;
            $self->{server}->_flush_soon;
            $done->done;
            return;
        }
        my $wait = $self->_after_send($buffered, $n);
        next if $wait->is_ready;
        $wait->on_done(sub { $self->_stream_chunks($fh, $left, $done) });
        return;
    }
}

sub _stream_failed {
    my ($self, $done, $error, $is_message) = @_;
    $error =~ s/\s+\z//;
    my $message = $is_message ? "$error\n" : "http.response.body: cannot read fh: $error\n";
    delete $self->{streaming};
    # Nothing queued yet: like a file that cannot be opened, only the
    # $send fails and the app may still answer otherwise.
    unless ($self->{stream_started}) {
        return Future->fail($message, 'pagi') unless $done;
        $done->fail($message, 'pagi') unless $done->is_ready;
        return;
    }
    # Bytes already went out under the announced framing: only a cut
    # connection tells the client the body is short.
    $self->{state} = 2 if $self->{state} == 1;
    $self->{aborted} = 1;
    $self->{engine}->abort($self->{id});
    $self->{server}->_flush_soon;
    return Future->fail($message, 'pagi') unless $done;
    $done->fail($message, 'pagi') unless $done->is_ready;
    return;
}

sub _trailers {
    my ($self, $event) = @_;
    my $headers = $event->{headers};
    return _fail("http.response.trailers: 'headers' must be an array reference")
        if defined $headers && ref $headers ne 'ARRAY';
    return $DONE if $self->{gone};
    return _fail('http.response.trailers: http.response.start did not declare trailers => 1')
        unless $self->{state} && $self->{trailers};
    return _fail('http.response.trailers: the response is already complete') if $self->{state} == 2;
    return _fail('http.response.trailers: send the final http.response.body (more => 0) first')
        unless $self->{body_ended} && !$self->{streaming};
    my $ok = eval { $self->{engine}->http_trailers($self->{id}, $headers // []); 1 };
    return _engine_error('http.response.trailers', $@) unless $ok;
    $self->{state} = 2;
    $self->{server}->_flush_soon;
    return $DONE;
}

=head2 app_finished

Called with the app's Future once it is ready: applies the server's part of
the completion contract (PAGI-SPEC 1.4): 500 when nothing was sent, closing
the connection when a response was cut short.

=cut

sub app_finished {
    my ($self, $f) = @_;
    $self->_app_outcome($f);
    $self->{app_done} = 1;
    $self->_release if $self->{ended};
}

sub _app_outcome {
    my ($self, $f) = @_;
    my $server = $self->{server};
    # A ready Future that is not done failed or was cancelled (one call for
    # the usual case, a done one).
    if (blessed $f && !$f->is_done) {
        my $error = $f->is_failed ? ($f->failure)[0] : 'app future was cancelled';
        $error =~ s/\s+\z//;
        $server->_log(error => "PAGI application error: $error ($self->{scope}{method} $self->{scope}{path})");
        $self->_abort_response;
        return;
    }
    # A handle still streaming finishes on its own (the app did not await it).
    return if $self->{gone} || $self->{state} == 2 || $self->{streaming};
    if ($self->{state} == 0) {
        $server->_log(error => "PAGI application returned without starting a response ($self->{scope}{method} $self->{scope}{path})");
    }
    $self->_abort_response;
}

# The usual endings, taken by PAGI::Server on its hot path and called as
# plain functions there (no method lookup). Each does what the general
# method would conclude, or returns false and leaves it to that method.

# app_finished for a done Future after a complete response.
sub _finished_quietly {
    my ($self, $f) = @_;
    return 0 unless $self->{state} == 2 && !$self->{ended} && $f->is_done;
    $self->{app_done} = 1;
    return 1;
}

# _ev_done then _ended for a request nothing waits on (no pending $receive,
# drain wait or callbacks) whose app is done; the caller logs nothing.
sub _done_quietly {
    my ($self) = @_;
    return 0 if !$self->{app_done} || $self->{receive_f} || $self->{above_high} || $self->{drain_f} || $self->{on_complete_cbs};
    $self->{complete} = $self->{ended} = 1;
    delete $self->{on_disconnect_cbs};
    _release($self);
    return 1;
}

# Called by the server after the request ended and was logged.
sub _ended {
    my ($self) = @_;
    $self->{ended} = 1;
    $self->_release if $self->{app_done};
}

# The scope holds this object (pagi.connection) and this object holds the
# scope: once both the app and the request are finished, break the cycle.
sub _release {
    my ($self) = @_;
    my $scope = delete $self->{scope} or return;
    delete @$scope{qw(pagi.connection pagi.transport)};
}

# An app callback died while an event for this request was dispatched:
# the same ending as an app exception, so the client is not left waiting.
sub _callback_died {
    my ($self) = @_;
    $self->_abort_response;
}

sub _abort_response {
    my ($self) = @_;
    return if $self->{gone};
    $self->{aborted} = 1;
    my $engine = $self->{engine};
    if ($self->{state} == 0) {
        $self->{status} = 500;
        $engine->respond_full($self->{id}, 500, [ [ 'content-type', 'text/plain' ], [ 'connection', 'close' ] ], "Internal Server Error\n");
        $self->{state} = 2;
    }
    $engine->abort($self->{id});
    $self->{server}->_flush_soon;
}

# Engine events for this request (called by PAGI::Server).

sub _ev_body {
    my ($self, $bytes, $more) = @_;
    $self->{body_done} = 1 unless $more;
    my $f = delete $self->{receive_f} or return;
    $f->done({ type => 'http.request', body => $bytes, more => $more });
}

sub _ev_done {
    my ($self) = @_;
    $self->{complete} = 1;
    # The request is over: nothing else will answer a pending $receive.
    if (my $f = delete $self->{receive_f}) {
        $f->done({%$DISCONNECT});
    }
    # Most requests never waited for drain nor registered callbacks: no calls then.
    $self->_ev_writable if $self->{above_high} || $self->{drain_f};
    if (my $cbs = delete $self->{on_complete_cbs}) { $self->_run_callbacks($cbs) }
    delete $self->{on_disconnect_cbs};
}

# PAGI-SPEC 3.1.5 order: is_connected false, reason set, disconnect_future
# resolved, on_disconnect callbacks, then http.disconnect for $receive.
sub _ev_disconnect {
    my ($self, $reason) = @_;
    $self->{gone} = $reason;
    if (my $df = $self->{disconnect_f}) {
        $df->done($reason) unless $df->is_ready;
    }
    $self->_run_callbacks(delete $self->{on_disconnect_cbs}, $reason);
    delete $self->{on_complete_cbs};
    if (my $f = delete $self->{receive_f}) {
        $f->done({%$DISCONNECT});
    }
    $self->_ev_writable;
}

# Graceful shutdown began: once the body is read, $receive says goodbye.
sub _ev_shutdown {
    my ($self) = @_;
    $self->{shutting_down} = 1;
    return unless $self->{body_done};
    if (my $f = delete $self->{receive_f}) {
        $f->done({ %$DISCONNECT, reason => 'server_shutdown' });
    }
}

sub _run_callbacks {
    my ($self, $cbs, @args) = @_;
    for my $cb (@{ $cbs // [] }) {
        eval { $cb->(@args); 1 }
            or $self->{server}->_log(error => "pagi.connection callback died: $@");
    }
}

sub _high_water {
    my ($self) = @_;
    $self->{above_high} = 1;
    for my $cb (@{ $self->{on_high_cbs} // [] }) {
        eval { $cb->(); 1 } or $self->{server}->_log(error => "pagi.transport on_high_water callback died: $@");
    }
}

sub _drained {
    my ($self) = @_;
    $self->{above_high} = 0;
    for my $cb (@{ $self->{on_drain_cbs} // [] }) {
        eval { $cb->(); 1 } or $self->{server}->_log(error => "pagi.transport on_drain callback died: $@");
    }
}

=head1 pagi.connection

The same object is the request's C<pagi.connection> (PAGI-SPEC 3.1.5):

=over 4

=item is_connected

True until the request ends (cleanly or not).

=item disconnect_reason

The reason of an abnormal end (C<client_closed>, C<server_error>,
C<server_shutdown>, C<body_too_large>, C<protocol_error>, C<client_timeout>,
C<write_error>, C<write_timeout>, C<read_error>), C<undef> otherwise.

=item on_disconnect($cb), on_complete($cb)

Exactly one of the two sets of callbacks runs per request. Registered after
the fact, a callback of the matching kind runs at once.

=item response_started, response_complete

=item disconnect_future

A Future done with the reason on an abnormal end; it never resolves on
clean completion.

=back

=cut

sub is_connected { $_[0]{gone} || $_[0]{complete} ? 0 : 1 }

sub disconnect_reason { $_[0]{gone} }

sub response_started { $_[0]{state} ? 1 : 0 }

sub response_complete { $_[0]{state} == 2 ? 1 : 0 }

sub on_disconnect {
    my ($self, $cb) = @_;
    if (defined $self->{gone}) { $self->_run_callbacks([$cb], $self->{gone}) }
    elsif (!$self->{complete}) { push @{ $self->{on_disconnect_cbs} }, $cb }
    return;
}

sub on_complete {
    my ($self, $cb) = @_;
    if ($self->{complete} && !defined $self->{gone}) { $self->_run_callbacks([$cb]) }
    elsif (!defined $self->{gone}) { push @{ $self->{on_complete_cbs} }, $cb }
    return;
}

sub disconnect_future {
    my ($self) = @_;
    return $self->{disconnect_f} //= do {
        my $f = $self->_new_future;
        $f->done($self->{gone}) if defined $self->{gone};
        $f;
    };
}

=head1 pagi.transport

And its C<pagi.transport> (PAGI-SPEC 3.1.6):

=over 4

=item buffered_amount

Response bytes queued for this client and not yet written.

=item high_water_mark, low_water_mark

=item on_high_water($cb), on_drain($cb)

Edge-triggered: C<on_high_water> when the buffer reaches the high mark
(at once if it already is), C<on_drain> when it falls below the low mark
after such a crossing.

=back

=cut

sub buffered_amount {
    my ($self) = @_;
    return 0 if defined $self->{gone} || $self->{complete};
    my $stats = $self->{engine}->stats($self->{id}) or return 0;
    return $stats->{buffered};
}

sub high_water_mark { $_[0]{server}{high_watermark} }

sub low_water_mark { $_[0]{server}{config}{write_low_watermark} }

sub on_high_water {
    my ($self, $cb) = @_;
    push @{ $self->{on_high_cbs} }, $cb;
    if ($self->{above_high}) {
        eval { $cb->(); 1 } or $self->{server}->_log(error => "pagi.transport on_high_water callback died: $@");
    }
    return;
}

sub on_drain {
    my ($self, $cb) = @_;
    push @{ $self->{on_drain_cbs} }, $cb;
    return;
}

1;
