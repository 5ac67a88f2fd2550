package PAGI::Server::SSE;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Server::HTTP';

use Future;
use Scalar::Util qw(blessed);

=head1 NAME

PAGI::Server::SSE - one sse scope: PAGI events to engine commands

=head1 DESCRIPTION

Internal to L<PAGI::Server>. A request whose C<Accept> asks for
C<text/event-stream> (any method) opens an C<sse> scope (PAGI-SPEC 3.3).
This class shares the request-body, backpressure and disconnect handling
of L<PAGI::Server::HTTP> and speaks the sse events:

=over 4

=item C<$receive>

C<sse.request> body chunks (one C<< {body => '', more => 0} >> for a GET),
then C<sse.disconnect> with a C<reason>: C<client_closed> and the other
standard tokens when the client or transport goes, C<server_shutdown> at
the start of a graceful shutdown, C<x-server-closed> once the stream was
ended by C<sse.close> or the app returning.

=item C<$send>

C<sse.start>, C<sse.send> (C<data> required; C<event>, C<id>, C<retry>),
C<sse.comment>, C<sse.keepalive> (comments written by the engine at the
interval, without waking Perl), C<sse.close>, the decline path
C<sse.http.response.start> / C<sse.http.response.body> (sent whole with a
Content-Length; a decline whose C<content-type> is C<text/event-stream>,
an app streaming its own events, or whose body grows past 64 KiB goes out
chunked as it is sent, with backpressure), and
C<http.fullflush> when that extension is advertised. Events are framed by
the engine; text fields are characters, sent UTF-8 encoded.

=back

The C<Last-Event-ID> request header, sent by a reconnecting EventSource,
is in C<< $scope->{headers} >>: it is the hook for resuming a stream.

The scope has C<pagi.transport> (this object) and no C<pagi.connection>.

States: 0 nothing sent, 1 streaming, 2 ended, 3 declining.

=cut

my $DONE = $PAGI::Server::Scope::DONE;
*_fail = \&PAGI::Server::Scope::_fail;

sub new {
    my ($class, $server, $id, $scope, $body) = @_;
    my $self = $class->SUPER::new($server, $id, $scope, $body);
    $scope->{'pagi.transport'} = $self;
    return $self;
}

sub receive {
    my ($self) = @_;
    return $self->SUPER::receive->then(sub {
        my ($event) = @_;
        if ($event->{type} eq 'http.request') {
            return Future->done({ %$event, type => 'sse.request' });
        }
        my $reason = $self->{gone} // ($self->{shutting_down} ? 'server_shutdown' : 'x-server-closed');
        return Future->done({ type => 'sse.disconnect', reason => $reason });
    });
}

my %SEND_METHOD = (
    'sse.start'               => '_sse_start',
    'sse.send'                => '_sse_send',
    'sse.comment'             => '_sse_comment',
    'sse.keepalive'           => '_sse_keepalive',
    'sse.close'               => '_sse_close',
    'sse.http.response.start' => '_decline_start',
    'sse.http.response.body'  => '_decline_body',
    'groups.join'             => '_groups',
    'groups.leave'            => '_groups',
    'groups.publish'          => '_groups',
);

sub send {
    my ($self, $event) = @_;
    my ($type, $failed) = PAGI::Server::Scope::_event_type($event);
    return $failed if $failed;
    my $method = $SEND_METHOD{$type};
    if (!$method && $type eq 'http.fullflush' && $self->{scope}{extensions}{fullflush}) {
        $self->{engine}->flush;
        return $DONE;
    }
    return _fail("Unrecognized event type '$type' for sse protocol") unless $method;
    # A publish is about the group, not this stream: it works in any state.
    return $self->_groups($event) if $type eq 'groups.publish';
    return $DONE if defined $self->{gone};
    if ($self->{closed} && $type ne 'sse.close') {
        return _fail("cannot send '$type' after sse.close");
    }
    return $self->$method($event);
}

# The groups extension (PAGI::Server::Groups).
sub _groups {
    my ($self, $event) = @_;
    return PAGI::Server::Groups::_scope_event($self, $event, $event->{type}, 'sse');
}

sub _sse_start {
    my ($self, $event) = @_;
    my $status = $event->{status} // 200;
    return _fail("sse.start: 'status' must be an integer from 100 to 999")
        unless !ref $status && $status =~ /\A[1-9][0-9][0-9]\z/;
    my $headers = $event->{headers};
    return _fail("sse.start: 'headers' must be an array reference") if defined $headers && ref $headers ne 'ARRAY';
    return _fail('sse.start: the stream was already started') if $self->{state} == 1 || $self->{state} == 2;
    return _fail('sse.start: a decline response (sse.http.response.start) was already sent') if $self->{state} == 3;
    my $ok = eval { $self->{engine}->sse_start($self->{id}, $status, $headers // []); 1 };
    return PAGI::Server::Scope::_engine_error('sse.start', $@) unless $ok;
    $self->{state}  = 1;
    $self->{status} = $status;
    $self->{server}->_flush_soon;
    return $DONE;
}

sub _streaming {
    my ($self, $type) = @_;
    return "$type: sent before sse.start" if $self->{state} == 0;
    return "$type: the stream was declined with sse.http.response.start" if $self->{state} == 3 || $self->{declined};
    return undef;
}

sub _sse_send {
    my ($self, $event) = @_;
    my ($data, $name, $id, $retry) = @$event{qw(data event id retry)};
    return _fail("sse.send: 'data' is required") unless defined $data;
    for ([ data => $data ], [ event => $name ], [ id => $id ]) {
        return _fail("sse.send: '$_->[0]' must be a string") if ref $_->[1];
    }
    return _fail("sse.send: 'retry' must be a non-negative integer")
        if defined $retry && (ref $retry || $retry !~ /\A\d+\z/);
    if (my $problem = $self->_streaming('sse.send')) { return _fail($problem) }
    my $buffered = eval { $self->{engine}->sse_send($self->{id}, $data, $name, $id, $retry) };
    return PAGI::Server::Scope::_engine_error('sse.send', $@) unless defined $buffered;
    return $self->_after_send($buffered);
}

sub _sse_comment {
    my ($self, $event) = @_;
    my $comment = $event->{comment};
    return _fail("sse.comment: 'comment' is required") unless defined $comment;
    return _fail("sse.comment: 'comment' must be a string") if ref $comment;
    if (my $problem = $self->_streaming('sse.comment')) { return _fail($problem) }
    my $buffered = eval { $self->{engine}->sse_comment($self->{id}, $comment) };
    return PAGI::Server::Scope::_engine_error('sse.comment', $@) unless defined $buffered;
    return $self->_after_send($buffered);
}

sub _sse_keepalive {
    my ($self, $event) = @_;
    my ($interval, $comment) = @$event{qw(interval comment)};
    return _fail("sse.keepalive: 'interval' must be a non-negative number")
        unless defined $interval && !ref $interval && $interval =~ /\A(?:\d+(?:\.\d*)?|\.\d+)\z/;
    return _fail("sse.keepalive: 'comment' must be a string") if ref $comment;
    my $ok = eval { $self->{engine}->sse_keepalive($self->{id}, $interval, $comment // ''); 1 };
    return PAGI::Server::Scope::_engine_error('sse.keepalive', $@) unless $ok;
    $self->{server}->_flush_soon;
    return $DONE;
}

sub _sse_close {
    my ($self, $event) = @_;
    return $DONE if $self->{closed};
    $self->{closed} = 1;
    $self->{close_reason} = $event->{reason};
    $self->_end_stream;
    return $DONE;
}

# Writes the end of the stream (the last chunk); the engine then closes.
sub _end_stream {
    my ($self) = @_;
    my $engine = $self->{engine};
    if ($self->{state} == 0) {
        $engine->sse_start($self->{id}, 200, []);
        $self->{status} = 200;
    }
    if ($self->{state} != 2) {
        $engine->http_body($self->{id}, '', 0);
        $self->{state} = 2;
    }
    $self->{server}->_flush_soon;
}

sub _decline_start {
    my ($self, $event) = @_;
    return _fail('sse.http.response.start: the decline response was already sent') if $self->{declined};
    return _fail('sse.http.response.start: the stream was already started') if $self->{state} == 1 || $self->{state} == 2;
    return _fail('sse.http.response.start: the decline response was already started') if $self->{state} == 3;
    my $status = $event->{status};
    return _fail("sse.http.response.start: 'status' must be an integer from 100 to 999")
        unless defined $status && !ref $status && $status =~ /\A[1-9][0-9][0-9]\z/;
    my $headers = $event->{headers};
    return _fail("sse.http.response.start: 'headers' must be an array reference") if defined $headers && ref $headers ne 'ARRAY';
    my $ok = eval { $self->{engine}->http_start($self->{id}, $status, $headers // [], 0); 1 };
    return PAGI::Server::Scope::_engine_error('sse.http.response.start', $@) unless $ok;
    $self->{state}    = 3;
    $self->{declined} = 1;
    $self->{decline_event_stream} = 1
        if grep { lc $_->[0] eq 'content-type' && $_->[1] =~ m{\A\s*text/event-stream}i } @{ $headers // [] };
    $self->{status}   = $status;
    return $DONE;
}

sub _decline_body {
    my ($self, $event) = @_;
    return _fail('sse.http.response.body: sent before sse.http.response.start') unless $self->{state} == 3;
    my $body = $event->{body} // '';
    return _fail("sse.http.response.body: 'body' must be a byte string") if ref $body;
    # A decline goes out in one piece with a Content-Length (PAGI-SPEC 3.3.2)
    # unless it streams: an event stream of the app's own (a PSGI app behind
    # PAGI::App::WrapPSGI writing text/event-stream), or a body past 64 KiB,
    # is sent piece by piece, chunked, with backpressure.
    if ($event->{more} && !$self->{decline_streaming}) {
        $self->{decline_streaming} = 1
            if $self->{decline_event_stream} || length($self->{decline_body} // '') + length($body) > 65536;
    }
    if ($self->{decline_streaming}) {
        my $piece = (delete($self->{decline_body}) // '') . $body;
        my $more = $event->{more} ? 1 : 0;
        my $buffered = eval { $self->{engine}->http_body($self->{id}, $piece, $more) };
        return PAGI::Server::Scope::_engine_error('sse.http.response.body', $@) unless defined $buffered;
        $self->{bytes_sent} += length $piece;
        $self->{state} = 2 unless $more;
        return $self->_after_send($buffered);
    }
    $self->{decline_body} .= $body;
    return $DONE if $event->{more};
    my $whole = delete $self->{decline_body};
    my $ok = eval { $self->{engine}->http_body($self->{id}, $whole, 0); 1 };
    return PAGI::Server::Scope::_engine_error('sse.http.response.body', $@) unless $ok;
    $self->{bytes_sent} += length $whole;
    $self->{state} = 2;
    $self->{server}->_flush_soon;
    return $DONE;
}

# The app's Future is ready: a stream it left open is ended properly; a
# failure before anything was sent is a 500, after start a cut connection.
sub _app_outcome {
    my ($self, $f) = @_;
    my $failed = blessed $f && ($f->is_failed || $f->is_cancelled);
    if ($failed) {
        my $error = $f->is_failed ? ($f->failure)[0] : 'app future was cancelled';
        $error =~ s/\s+\z//;
        $self->{server}->_log(error => "PAGI application error: $error (sse $self->{scope}{path})");
    }
    return if defined $self->{gone} || $self->{state} == 2;
    if ($self->{state} == 1 && !$failed) {
        $self->_end_stream;
        return;
    }
    $self->_abort_response;
}

1;
