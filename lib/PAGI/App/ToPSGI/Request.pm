package PAGI::App::ToPSGI::Request;
use strict;
use warnings;

our $VERSION = '0.01';

use Future;
use Scalar::Util qw(blessed openhandle);
use PAGI::Server::Validate;

=head1 NAME

PAGI::App::ToPSGI::Request - internal: one PSGI request seen as a PAGI http scope

=head1 DESCRIPTION

Internal to L<PAGI::App::ToPSGI>. One object per PSGI request: its
C<receive> and C<send> are the app's C<$receive> and C<$send>, and the
object itself is the scope's C<pagi.connection>. PAGI events are checked
here (a bad one fails its C<$send> Future with a message naming the event
and the field) and turned into calls of the PSGI responder and writer, or,
on a server without C<psgi.streaming>, into a buffered response.

Response states: 0 nothing sent, 1 C<http.response.start> recorded,
2 the responder was called (a writer is open), 3 complete.

=cut

my $DISCONNECT = { type => 'http.disconnect' };

sub new {
    my ($class, %args) = @_;
    my $env = $args{env};
    my $length = $env->{CONTENT_LENGTH};
    my $chunked = ($env->{HTTP_TRANSFER_ENCODING} // '') =~ /chunked/i;
    return bless {
        env        => $env,
        chunk_size => $args{chunk_size},
        # Bytes of body still to read; -1 = read to EOF (a chunked body the
        # server did not measure); 0 = none (PAGI-SPEC 3.1.1: no length, no body).
        remaining  => defined $length && length $length ? $length : $chunked ? -1 : 0,
        head       => ($env->{REQUEST_METHOD} // '') eq 'HEAD',
        state      => 0,
        chunks     => [],
    }, $class;
}

# Set by the adapter when the server streams: the PSGI responder coderef.
sub set_responder { $_[0]{responder} = $_[1] }

=head1 METHODS

=head2 receive

A Future of the next inbound event: C<http.request> pieces read from
C<psgi.input>, then C<http.disconnect> once the response is complete (or at
once if reading the body failed).

=cut

sub receive {
    my ($self) = @_;
    return Future->done({%$DISCONNECT}) if defined $self->{gone} || $self->{state} == 3;
    return $self->{receive_f} //= Future->new if $self->{body_done};
    return Future->done($self->_read_body);
}

sub _read_body {
    my ($self) = @_;
    my $remaining = $self->{remaining};
    if ($remaining == 0) {
        $self->{body_done} = 1;
        return { type => 'http.request', body => '', more => 0 };
    }
    my $want = $remaining < 0 || $remaining > $self->{chunk_size} ? $self->{chunk_size} : $remaining;
    my $input = $self->{env}{'psgi.input'};
    my $got = $input ? $input->read(my $buf, $want) : 0;
    $buf //= '';
    if (!defined $got) {
        $self->_gone('read_error');
        return {%$DISCONNECT};
    }
    if ($got == 0) {
        if ($remaining < 0) {
            $self->{body_done} = 1;
            return { type => 'http.request', body => '', more => 0 };
        }
        # Fewer bytes than Content-Length promised: the client went away.
        $self->_gone('client_closed');
        return {%$DISCONNECT};
    }
    $self->{remaining} = $remaining -= $got if $remaining > 0;
    my $more = $remaining == 0 ? 0 : 1;
    $self->{body_done} = 1 unless $more;
    return { type => 'http.request', body => $buf, more => $more };
}

=head2 send

Takes one event hashref; returns a Future, done once the event was handed
to the PSGI server, failed with a message naming the problem.

=cut

my %SEND = (
    'http.response.start'    => \&_start,
    'http.response.body'     => \&_body,
    'http.response.trailers' => \&_trailers,
);

sub send {
    my ($self, $event) = @_;
    return _fail('send: event must be a hash reference') unless ref $event eq 'HASH';
    my $type = $event->{type};
    return _fail("send: event has no 'type' field") unless defined $type;
    my $handler = $SEND{$type};
    if (!$handler) {
        return _fail("$type: not supported (the fullflush extension is not advertised)")
            if $type eq 'http.fullflush';
        return _fail("Unrecognized event type '$type' for http protocol");
    }
    if (my $problem = PAGI::Server::Validate->http_event($event)) {
        return _fail($problem);
    }
    # PAGI-SPEC 1.5: after the client is gone a send is a no-op.
    return Future->done if defined $self->{gone};
    return $self->$handler($event);
}

sub _fail { Future->fail("$_[0]\n", 'pagi') }

sub _start {
    my ($self, $event) = @_;
    return _fail('http.response.start: already sent') if $self->{state};
    my $status = $event->{status};
    return _fail("http.response.start: 'status' must be between 100 and 599 (got $status)")
        unless $status >= 100 && $status <= 599;
    my @flat;
    my $i = 0;
    for my $pair (@{ $event->{headers} // [] }) {
        my ($name, $value) = @$pair;
        return _fail("http.response.start: 'headers' entry $i: Invalid header name: contains CR, LF, or null byte")
            if $name =~ /[\r\n\0]/;
        return _fail("http.response.start: 'headers' entry $i: Invalid header name: contains control characters")
            if $name =~ /[\x00-\x20\x7F]/ || $name eq '';
        return _fail("http.response.start: 'headers' entry $i: Invalid header value: contains CR, LF, or null byte")
            if $value =~ /[\r\n\0]/;
        $i++;
        # The PSGI server owns framing and the connection (PAGI-SPEC 3.1.2).
        next if lc $name eq 'transfer-encoding' || lc $name eq 'connection';
        push @flat, $name, $value;
    }
    @$self{qw(status headers trailers state)} = ($status, \@flat, $event->{trailers} ? 1 : 0, 1);
    return Future->done;
}

sub _body {
    my ($self, $event) = @_;
    return _fail('http.response.body: sent before http.response.start') unless $self->{state};
    return _fail('http.response.body: the response body is already complete')
        if $self->{state} == 3 || $self->{body_complete};
    my $sources = grep { defined $event->{$_} } qw(body file fh);
    return _fail("http.response.body: 'body', 'file' and 'fh' are mutually exclusive") if $sources > 1;

    if (defined(my $path = $event->{file})) {
        open(my $fh, '<:raw', $path)
            or return _fail("http.response.body: cannot open file '$path': $!");
        my $f = $self->_stream_handle($fh, $event);
        close $fh;
        return $f;
    }
    return $self->_stream_handle($event->{fh}, $event) if $event->{fh};

    my $body = $event->{body} // '';
    my $more = $event->{more} ? 1 : 0;
    # A whole body in one event goes to the server as an array body: no
    # writer, and the server may frame it as it likes.
    if ($self->{state} == 1 && !$more && !$self->{trailers}) {
        $self->_respond([ $self->{status}, $self->{headers}, [ $self->{head} ? () : $body ] ]);
        $self->_complete;
        return Future->done;
    }
    $self->_write($body);
    $self->_end_body unless $more;
    return Future->done;
}

# Streams a file or handle body in chunk_size pieces; it completes the body.
sub _stream_handle {
    my ($self, $fh, $event) = @_;
    openhandle($fh) or (blessed $fh && $fh->can('read'))
        or return _fail("http.response.body: 'fh' must be an open filehandle");
    if (my $offset = $event->{offset}) {
        seek($fh, $offset, 0) or return _fail("http.response.body: cannot seek to offset $offset: $!");
    }
    my $left = $event->{length};
    while (!defined $left || $left > 0) {
        my $want = defined $left && $left < $self->{chunk_size} ? $left : $self->{chunk_size};
        my $got = read($fh, my $buf, $want);
        return _fail("http.response.body: reading the file failed: $!") unless defined $got;
        last if $got == 0;
        $left -= $got if defined $left;
        $self->_write($buf);
        return Future->done if defined $self->{gone};
    }
    $self->_end_body;
    return Future->done;
}

sub _trailers {
    my ($self, $event) = @_;
    return _fail('http.response.trailers: http.response.start did not announce trailers (trailers => 1)')
        unless $self->{trailers};
    return _fail('http.response.trailers: sent before the final http.response.body')
        unless $self->{body_complete};
    return _fail('http.response.trailers: the response is already complete') if $self->{state} == 3;
    # PSGI has no trailers: they are dropped and the body ends here.
    $self->_finish_writer;
    return Future->done;
}

# The final body piece was written; with trailers announced the response
# ends at the trailers event instead.
sub _end_body {
    my ($self) = @_;
    $self->{body_complete} = 1;
    $self->_finish_writer unless $self->{trailers};
}

sub _finish_writer {
    my ($self) = @_;
    $self->_open_writer;
    if (my $writer = delete $self->{writer}) {
        eval { $writer->close; 1 } or $self->_gone('write_error');
    }
    $self->_complete;
}

sub _write {
    my ($self, $bytes) = @_;
    $self->_open_writer;
    return if $self->{head} || !length $bytes;
    if (my $writer = $self->{writer}) {
        eval { $writer->write($bytes); 1 } or $self->_gone('write_error');
    }
    else {
        push @{ $self->{chunks} }, $bytes;
    }
}

# The responder gets status and headers at the first body piece, so an
# app that dies between http.response.start and its body still gets a 500.
sub _open_writer {
    my ($self) = @_;
    return unless $self->{state} == 1;
    $self->{state} = 2;
    my $responder = $self->{responder} or return;    # buffered: the adapter returns it all
    my $writer = eval { $responder->([ $self->{status}, $self->{headers} ]) };
    if (!$writer) {
        $self->_gone('write_error');
        return;
    }
    $self->{writer} = $writer;
}

sub _respond {
    my ($self, $response) = @_;
    $self->{state} = 2;
    if (my $responder = $self->{responder}) {
        eval { $responder->($response); 1 } or $self->_gone('write_error');
    }
    else {
        $self->{response} = $response;
    }
}

=head2 app_finished

Called with the app's ready Future. Turns an exception (or a missing
response) into a 500 when nothing was handed to the server yet, ends an
unfinished streamed body, and answers a pending C<$receive>. Returns the
error message to log, or C<undef>.

=cut

sub app_finished {
    my ($self, $f) = @_;
    my $error;
    if ($f->is_failed) {
        $error = ($f->failure)[0] // 'unknown error';
        $error =~ s/\s+\z//;
        $error = "the application raised: $error";
    }
    elsif ($self->{state} == 0) {
        $error = 'the application returned without sending http.response.start';
    }
    if (defined $error) {
        if ($self->{state} < 2 && !defined $self->{gone}) {
            $self->_respond([ 500, [ 'Content-Type' => 'text/plain', 'Content-Length' => 22 ],
                              [ $self->{head} ? () : "Internal Server Error\n" ] ]);
        }
        # PSGI cannot abort a streamed body: it ends where the app stopped.
        elsif (my $writer = delete $self->{writer}) {
            eval { $writer->close; 1 };
        }
        $self->_gone('server_error');
    }
    elsif ($self->{state} == 1) {
        # Started without a body: the response is the status and headers.
        $self->_respond([ $self->{status}, $self->{headers}, [] ]);
    }
    elsif ($self->{state} == 2 && !defined $self->{gone}) {
        $self->_finish_writer;    # a streamed body the app left open
    }
    $self->_complete;
    return $error;
}

# The buffered PSGI response (servers without psgi.streaming).
sub buffered_response {
    my ($self) = @_;
    my $response = $self->{response} // [ $self->{status}, $self->{headers}, [] ];
    push @{ $response->[2] }, @{ $self->{chunks} } if @{ $self->{chunks} };
    return $response;
}

sub _complete {
    my ($self) = @_;
    return if $self->{state} == 3;
    $self->{state} = 3;
    if (my $f = delete $self->{receive_f}) {
        $f->done({%$DISCONNECT});
    }
    return if defined $self->{gone};
    _run_callbacks(delete $self->{on_complete_cbs});
    delete $self->{on_disconnect_cbs};
}

# PAGI-SPEC 3.1.5 order: is_connected false, reason, disconnect_future,
# on_disconnect callbacks, then http.disconnect for a pending $receive.
sub _gone {
    my ($self, $reason) = @_;
    return if defined $self->{gone} || $self->{state} == 3;
    $self->{gone} = $reason;
    delete $self->{writer};
    if (my $df = $self->{disconnect_f}) {
        $df->done($reason) unless $df->is_ready;
    }
    _run_callbacks(delete $self->{on_disconnect_cbs}, $reason);
    delete $self->{on_complete_cbs};
    if (my $f = delete $self->{receive_f}) {
        $f->done({%$DISCONNECT});
    }
}

sub _run_callbacks {
    my ($cbs, @args) = @_;
    for my $cb (@{ $cbs // [] }) {
        eval { $cb->(@args); 1 } or warn "PAGI::App::ToPSGI: pagi.connection callback died: $@";
    }
}

=head1 pagi.connection

The object is the scope's C<pagi.connection> (PAGI-SPEC 3.1.5). PSGI gives
no news of a client that goes away, so the only abnormal ends it sees are a
request body cut short (C<client_closed>), a failed read (C<read_error>),
a writer that dies (C<write_error>) and an app exception
(C<server_error>).

=over

=item is_connected, disconnect_reason, response_started, response_complete

=item on_disconnect($cb), on_complete($cb)

Exactly one of the two sets runs per request; registered after the fact, a
callback of the matching kind runs at once.

=item disconnect_future

A Future done with the reason on an abnormal end; never resolved on clean
completion.

=back

=cut

sub is_connected { defined $_[0]{gone} || $_[0]{state} == 3 ? 0 : 1 }

sub disconnect_reason { $_[0]{gone} }

sub response_started { $_[0]{state} ? 1 : 0 }

sub response_complete { $_[0]{state} == 3 && !defined $_[0]{gone} ? 1 : 0 }

sub on_disconnect {
    my ($self, $cb) = @_;
    if (defined $self->{gone}) { _run_callbacks([$cb], $self->{gone}) }
    elsif ($self->{state} != 3) { push @{ $self->{on_disconnect_cbs} }, $cb }
    return;
}

sub on_complete {
    my ($self, $cb) = @_;
    return if defined $self->{gone};
    if ($self->{state} == 3) { _run_callbacks([$cb]) }
    else { push @{ $self->{on_complete_cbs} }, $cb }
    return;
}

sub disconnect_future {
    my ($self) = @_;
    my $f = $self->{disconnect_f} //= Future->new;
    $f->done($self->{gone}) if defined $self->{gone} && !$f->is_ready;
    return $f;
}

1;
